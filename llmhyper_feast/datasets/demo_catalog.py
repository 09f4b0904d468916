"""Hand-written content of the demo ad market: categories, products, captions, relations.

Each category maps to the user feature of the same name. ``related`` categories get a
smaller positive true weight, ``flags`` on products move behavioural weights (premium,
deal, meat, mobile app).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Product:
    name: str
    caption: str
    flags: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Category:
    feature: str
    colour: tuple[int, int, int]
    related: tuple[str, ...]
    products: tuple[Product, ...]


def _p(name: str, caption: str, *flags: str) -> Product:
    return Product(name, caption, frozenset(flags))


HOOKS = {
    "plain": ["{name}", "Discover the new {name}", "{name}, made to last", "Meet the {name}"],
    "deal": ["{name}: 40% off this week", "Save big on the {name}", "{name} at half price, today only"],
    "premium": ["The {name}, crafted without compromise", "Luxury {name}, for those who expect more"],
    "app": ["Download {name} free on your phone", "{name}: get the app today"],
}

CATEGORIES: tuple[Category, ...] = (
    Category(
        "toys_games",
        (230, 80, 60),
        ("baby_kids", "video_games"),
        (
            _p("LEGO city fire station set", "A bright red brick fire station with minifigures and a ladder truck"),
            _p("1000-piece jigsaw puzzle of Venice", "A half-finished puzzle of canals and gondolas on a wooden table"),
            _p("family board game night bundle", "Three board game boxes stacked beside dice and cards", "deal"),
            _p("remote-control monster truck", "A chunky toy truck jumping over a dirt ramp"),
            _p("wooden marble run", "A tall wooden track with glass marbles rolling down"),
            _p("collectible trading card starter deck", "Fanned-out colourful trading cards on a playmat"),
        ),
    ),
    Category(
        "fashion",
        (200, 60, 160),
        ("beauty",),
        (
            _p("linen summer dress", "A woman in a flowing white linen dress on a beach boardwalk"),
            _p("Italian leather handbag", "A tan leather handbag on a marble shelf", "premium"),
            _p("classic white sneakers", "Clean white sneakers on a concrete step"),
            _p("wool winter coat", "A camel wool coat on a mannequin in falling snow"),
            _p("end-of-season clothing sale", "Racks of shirts and jeans with red sale tags", "deal"),
            _p("designer sunglasses", "Tortoiseshell sunglasses reflecting a city skyline", "premium"),
        ),
    ),
    Category(
        "beauty",
        (250, 170, 190),
        ("fashion",),
        (
            _p("vitamin C brightening serum", "A dropper bottle of orange serum on a bathroom counter"),
            _p("long-wear matte lipstick set", "Five lipsticks in red and nude shades lined up"),
            _p("French eau de parfum", "A faceted glass perfume bottle with gold cap", "premium"),
            _p("gentle daily face cleanser", "A pump bottle of foaming cleanser next to a towel"),
            _p("beauty advent calendar", "An opened box of miniature skincare and make-up products", "deal"),
            _p("hair straightener with ceramic plates", "A sleek black hair straightener beside a brush"),
        ),
    ),
    Category(
        "electronics",
        (40, 90, 200),
        ("video_games",),
        (
            _p("noise-cancelling headphones", "Over-ear black headphones on a desk next to a laptop"),
            _p("ultrathin 14-inch laptop", "An open silver laptop showing a colourful screen", "premium"),
            _p("5G smartphone with triple camera", "The back of a phone with three camera lenses"),
            _p("4K smart TV", "A large wall-mounted TV showing a mountain landscape"),
            _p("wireless earbuds", "White earbuds in an open charging case", "deal"),
            _p("smartwatch with heart-rate tracking", "A black smartwatch on a wrist showing a pulse graph"),
        ),
    ),
    Category(
        "home_furniture",
        (150, 110, 70),
        ("gardening", "cooking"),
        (
            _p("mid-century velvet sofa", "A green velvet sofa in a sunlit living room", "premium"),
            _p("solid oak dining table", "A long oak table set for six with ceramic plates"),
            _p("memory foam mattress", "A white mattress in a minimalist bedroom", "deal"),
            _p("floor lamp with linen shade", "A tall brass lamp glowing beside an armchair"),
            _p("modular bookshelf", "White cube shelves filled with books and plants"),
            _p("handwoven wool rug", "A patterned rug on a wooden floor"),
        ),
    ),
    Category(
        "cooking",
        (240, 150, 30),
        ("home_furniture",),
        (
            _p("cast-iron skillet", "A seared steak sizzling in a black cast-iron pan", "meat"),
            _p("stand mixer", "A red stand mixer beating cake batter in a steel bowl"),
            _p("chef's knife set", "Five knives on a magnetic strip above a cutting board", "premium"),
            _p("air fryer", "Golden fries in the basket of an air fryer", "deal"),
            _p("barbecue meat box subscription", "A box of marbled steaks and sausages on butcher paper", "meat"),
            _p("pasta maker", "Fresh tagliatelle coming out of a hand-cranked pasta machine"),
        ),
    ),
    Category(
        "fitness",
        (30, 180, 90),
        ("outdoor",),
        (
            _p("adjustable dumbbells", "A pair of dumbbells on a gym floor"),
            _p("running shoes with carbon plate", "A neon running shoe mid-stride on a track", "premium"),
            _p("gym membership", "People lifting weights in a bright modern gym", "deal"),
            _p("yoga mat and block set", "A purple yoga mat rolled out on a wooden floor"),
            _p("whey protein powder", "A tub of protein powder and a shaker bottle"),
            _p("indoor cycling bike", "A stationary bike facing a large screen class", "premium"),
        ),
    ),
    Category(
        "outdoor",
        (60, 120, 50),
        ("fitness", "travel"),
        (
            _p("four-season camping tent", "An orange tent pitched on a snowy mountain ridge"),
            _p("waterproof hiking boots", "Muddy hiking boots on a forest trail"),
            _p("fly fishing rod kit", "A fishing rod arched over a river with a trout on the line", "meat"),
            _p("down sleeping bag", "A sleeping bag by a campfire under the stars"),
            _p("ultralight backpack", "A green backpack on a hiker looking over a valley", "deal"),
            _p("inflatable kayak", "A yellow kayak on a calm lake at sunrise"),
        ),
    ),
    Category(
        "travel",
        (0, 170, 200),
        ("outdoor",),
        (
            _p("weekend city break in Lisbon", "Yellow trams on a steep street in Lisbon"),
            _p("all-inclusive beach resort", "A turquoise pool by palm trees and the sea", "premium"),
            _p("last-minute flight deals", "An airplane wing above the clouds at sunset", "deal"),
            _p("Alpine ski chalet stay", "A wooden chalet in deep snow with mountains behind"),
            _p("travel insurance for families", "A family with suitcases at an airport gate"),
            _p("Mediterranean cruise", "A white cruise ship anchored off a Greek island", "premium"),
        ),
    ),
    Category(
        "automotive",
        (90, 90, 100),
        ("electronics",),
        (
            _p("all-season tyres", "A close-up of a new tyre tread on wet asphalt", "deal"),
            _p("electric SUV test drive", "A silver electric SUV charging at a station", "premium"),
            _p("dash cam with night vision", "A small camera mounted behind a windscreen"),
            _p("car detailing kit", "Sponges, wax and a gleaming black car bonnet"),
            _p("roof cargo box", "A black cargo box on a car roof on a mountain road"),
            _p("synthetic engine oil", "A bottle of motor oil being poured into an engine"),
        ),
    ),
    Category(
        "pets",
        (180, 130, 60),
        ("outdoor",),
        (
            _p("grain-free dog food", "A happy golden retriever next to a food bowl"),
            _p("cat scratching tower", "A tabby cat perched on a tall scratching post"),
            _p("GPS pet tracker", "A small tracker clipped to a dog's collar in a park"),
            _p("pet insurance", "A vet examining a puppy on a table"),
            _p("automatic litter box", "A sleek white litter box in a laundry room", "premium"),
            _p("squeaky chew toy pack", "A pile of colourful rubber dog toys", "deal"),
        ),
    ),
    Category(
        "books",
        (120, 70, 40),
        ("baby_kids",),
        (
            _p("bestselling mystery novel", "A hardback thriller on a bedside table with a lamp"),
            _p("audiobook subscription", "Headphones resting on an open book", "app"),
            _p("online data science course", "A laptop showing charts and a notebook of formulas"),
            _p("e-reader with warm light", "An e-reader on a blanket beside a cup of tea"),
            _p("classic literature box set", "A row of clothbound classics on a shelf", "premium"),
            _p("second-hand book sale", "Crates of used books at a street market", "deal"),
        ),
    ),
    Category(
        "finance",
        (20, 60, 110),
        ("travel",),
        (
            _p("cashback credit card", "A metal credit card on a restaurant bill", "deal"),
            _p("mobile banking app", "A phone screen showing a savings balance graph", "app"),
            _p("index fund investing account", "A rising line chart on a tablet"),
            _p("home insurance quote", "A model house under an umbrella"),
            _p("private wealth management", "Two people in suits talking in a glass office", "premium"),
            _p("mortgage rate comparison", "Keys to a new house held over a contract"),
        ),
    ),
    Category(
        "video_games",
        (120, 40, 180),
        ("electronics", "toys_games"),
        (
            _p("open-world fantasy RPG", "A knight overlooking a glowing valley on a game screen"),
            _p("next-gen game console", "A white console and controller under neon light", "premium"),
            _p("free-to-play mobile strategy game", "A phone showing a castle battle game", "app"),
            _p("mechanical gaming keyboard", "An RGB-lit keyboard in a dark room"),
            _p("racing wheel and pedals", "A steering wheel mounted to a desk with a race on screen"),
            _p("game pass subscription sale", "A grid of game covers with a discount badge", "deal"),
        ),
    ),
    Category(
        "baby_kids",
        (250, 210, 80),
        ("toys_games",),
        (
            _p("convertible baby stroller", "A grey stroller in a leafy park"),
            _p("organic cotton baby onesies", "Folded pastel onesies in a basket"),
            _p("nappy bulk pack", "A large pack of nappies with a smiling baby", "deal"),
            _p("baby monitor with video", "A camera monitor showing a sleeping infant"),
            _p("kids' balance bike", "A toddler on a wooden balance bike on a path"),
            _p("nursery furniture set", "A white cot and dresser in a soft green room", "premium"),
        ),
    ),
    Category(
        "gardening",
        (70, 160, 60),
        ("home_furniture", "outdoor"),
        (
            _p("heirloom tomato seed collection", "Packets of seeds beside ripe tomatoes"),
            _p("cordless lawn mower", "A green mower on a freshly striped lawn"),
            _p("raised garden bed kit", "Cedar planters full of lettuce and herbs"),
            _p("flowering perennial bundle", "A border of lavender and pink echinacea"),
            _p("garden tool set sale", "A trowel, fork and pruners on a potting bench", "deal"),
            _p("teak garden furniture", "A teak table and chairs on a sunny patio", "premium"),
        ),
    ),
)

BEHAVIOUR_FEATURES = ("deal_seeking", "premium_affinity", "mobile_share", "vegetarian")


@dataclass(frozen=True)
class Advertiser:
    """A brand that buys ads in one category (the unit user priors predict)."""

    advertiser_id: str
    name: str
    category: str


# Three invented brands per category; an ad's advertiser is one of its category's brands.
_BRANDS: dict[str, tuple[str, str, str]] = {
    "toys_games": ("Brickhaven", "Puzzleworks", "Tumbletop Games"),
    "fashion": ("Linea Moda", "Norththread", "Saltmarsh Apparel"),
    "beauty": ("Glowfield", "Maison Ambre", "Dewline"),
    "electronics": ("Voltway", "Quill Audio", "Pixelhart"),
    "home_furniture": ("Oakroom", "Nestform", "Lumen & Loom"),
    "cooking": ("Ironleaf Kitchen", "Whiskwell", "Ember Butchery"),
    "fitness": ("Stridecore", "Liftlab", "Zen Flow"),
    "outdoor": ("Ridgeline Gear", "Riverbend Outfitters", "Summit Shell"),
    "travel": ("Wanderbay", "Blue Horizon Resorts", "Skyhop"),
    "automotive": ("Gripline Tyres", "Voltcar", "Shinebay Car Care"),
    "pets": ("Pawsome", "Whisker & Co", "Tailtrack"),
    "books": ("Pageturner", "Earshelf Audio", "Learnloop"),
    "finance": ("Cobalt Bank", "Harbour Insure", "Steadyvest"),
    "video_games": ("Nebula Play", "Pocket Legion", "Keystrike"),
    "baby_kids": ("Tiny Steps", "Cottonbud Baby", "Little Nest"),
    "gardening": ("Greenthumb Seeds", "Mowright", "Patio Teak"),
}

ADVERTISERS: tuple[Advertiser, ...] = tuple(
    Advertiser(f"adv{c * 3 + b:03d}", name, cat.feature)
    for c, cat in enumerate(CATEGORIES)
    for b, name in enumerate(_BRANDS[cat.feature])
)


def advertisers_of(category: str) -> tuple[Advertiser, ...]:
    """The brands of ``category``, in id order."""
    return tuple(a for a in ADVERTISERS if a.category == category)


# --- counterfactual rewrites for the robustness check (jobs/robustness.py) ------------------------
# Per category feature: a phrase that strengthens the ad's pull on that interest, one that steers
# the ad away from it, and a broader noun that names the product without the category.
COUNTERFACTUAL_PHRASES: dict[str, tuple[str, str, str]] = {
    "toys_games": ("a hit with kids who love to play and build", "sold as a desk ornament, not a toy", "leisure item"),
    "fashion": ("the look of the season for style lovers", "plain workwear, no fashion involved", "everyday item"),
    "beauty": ("a must for your skincare and make-up routine", "an unscented basic with no beauty claims", "item"),
    "electronics": ("packed with the latest tech for gadget fans", "low-tech and offline by design", "device"),
    "home_furniture": ("the centrepiece your home deserves", "made for office lobbies, not homes", "item"),
    "cooking": ("for home cooks who love their kitchen", "ready-made, no cooking needed", "household item"),
    "fitness": ("train harder and hit your workout goals", "for lazy days on the sofa, no exercise", "product"),
    "outdoor": ("built for trails, camping and the wild", "for indoor use only", "leisure product"),
    "travel": ("your next getaway starts here", "stay at home and skip the trip", "offer"),
    "automotive": ("for drivers who love their car", "for people who never drive", "accessory"),
    "pets": ("your dog or cat will love it", "for pet-free homes", "household product"),
    "books": ("for readers who love a good story", "no reading required", "product"),
    "finance": ("grow your savings and investments", "no accounts, no fees, no money talk", "service"),
    "video_games": ("for gamers who want the next level", "a screen-free alternative to gaming", "product"),
    "baby_kids": ("made for babies and young children", "for adults only", "family product"),
    "gardening": ("for gardeners with green fingers", "for homes without a garden", "household item"),
}


def counterfactual_variants(title: str, caption: str) -> tuple[str, dict[str, tuple[str, str]]] | None:
    """The target feature and hand-written (title, caption) rewrites of a demo ad, by variant.

    Variants are ``enhanced``, ``diminished`` and ``neutralized`` with respect to the ad's
    category feature (its labelled most important feature). The ad is recognised by its
    caption, which the demo world copies from the catalog; None for any other ad.
    """
    for cat in CATEGORIES:
        for product in cat.products:
            if product.caption == caption:
                enhance, diminish, generic = COUNTERFACTUAL_PHRASES[cat.feature]
                return cat.feature, {
                    "enhanced": (f"{title}: {enhance}", f"{caption}, {enhance}"),
                    "diminished": (f"{title}: {diminish}", f"{caption}, {diminish}"),
                    "neutralized": (f"A new {generic} for everyone", f"A {generic} shown on a plain background"),
                }
    return None
