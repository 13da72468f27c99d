"""The values generated account records draw from.

Each pool mixes plain values with the awkward ones a connector must survive: accents, CJK
and emoji, commas, quotes and newlines in text, and ``None`` where Ometria sends nulls.
``Dataset`` picks from them with its seeded generator, some by fixed-width bit fields of
one random draw, so their order and length are part of what a seed produces: change them
and every seeded account changes too.
"""

FIRST_NAMES = [
    "Zoë", "José", "Łukasz", "Søren", "美咲", "Anna", "Tom", "Chloé", "Mia 🌸", "Oliver",
    "Amélie", "Jan", "Priya", "Noah", "Ingrid", "Kenji",
]  # fmt: skip
LAST_NAMES = [
    "O'Brien", "Smith", "Kowalski", "Müller", "山田", "Nguyen", "García", "Brown", "Dupont",
    "Jones", "Øvergård", "Patel",
]  # fmt: skip
# (country, timezone, city, province, zip)
LOCATIONS: list[tuple[str | None, str | None, str | None, str | None, str | None]] = [
    ("GB", "Europe/London", "London", "Greater London", "SW1A 1AA"),
    ("GB", "Europe/London", "Manchester", None, "M1 1AE"),
    ("PL", "Europe/Warsaw", "Łódź", "łódzkie", "90-001"),
    ("JP", "Asia/Tokyo", "東京", "東京都", "100-0001"),
    ("DE", "Europe/Berlin", "München", "Bayern", "80331"),
    ("FR", "Europe/Paris", "Saint-Étienne", "Auvergne-Rhône-Alpes", "42000"),
    ("US", "America/New_York", "New York", "NY", "10001"),
    (None, None, None, None, None),
]
ADDRESSES: list[str | None] = [
    "1 High Street",
    '12 "Old" Mill Lane, Unit 3',
    "Flat 4, 22 Baker St",
    "ul. Piotrkowska 5",
    "千代田1-1",
    None,
]
OPTIN = ["EXPLICITLY_OPTEDIN", "NOT_SPECIFIED", "EXPLICITLY_OPTEDOUT"]
LIFECYCLE: list[str | None] = ["prospect", "active", "lapsed", "vip", None]
GENDERS: list[str | None] = ["f", "m", None, "x"]
SHOPIFY_TAGS = ["", "vip", "wholesale, vip", 'said "hi"', "newsletter"]
TAGS = [[], ["vip"], ["newsletter", "app"], ["💎 gold"]]

LIST_TITLES = [
    "Newsletter — UK",
    "VIP 🌟",
    "Łódź shoppers",
    "Lapsed, 90 days",
    'The "engaged" segment',
    "Abandoned basket",
]
UNSUB_TYPES = ["unsubscribe", "complaint", "hard_bounce"]
UNSUB_REASONS: list[tuple[str | None, str | None]] = [
    ("too_many", "Too many emails"),
    ("not_relevant", 'Content "not relevant", sorry'),
    ("other", "Ich möchte keine E-Mails mehr 📭"),
    (None, None),
]
EVENT_TYPES = ["send", "send", "send", "open", "open", "click", "bounce", "unsubscribe"]
BOUNCE_CLASSES = ["hard", "soft", "block"]
DEVICES: list[str | None] = ["mobile", "desktop", "tablet", None]
GEOS: list[tuple[str | None, str | None, str | None]] = [
    ("GB", "England", "Europe/London"),
    ("PL", "Łódzkie", "Europe/Warsaw"),
    ("JP", "東京都", "Asia/Tokyo"),
    (None, None, None),
]
CAMPAIGNS = [
    ("Spring sale, 20% off", "mass"),
    ('The "Big" Event', "mass"),
    ("Line one\nline two", "trigger"),
    ("Été 🌞 collection", "mass"),
    ("Welcome series", "trigger"),
    ("Order confirmation", "transactional"),
]
