"""Generate the course's customer-support dataset and a small pretraining corpus.

Everything here is invented for this course. Standard library only, and fully
deterministic: running it twice writes byte-identical files.

    python data/generate_support.py

writes
    data/support/train.jsonl       3000 examples
    data/support/validation.jsonl   300 examples
    data/support/test.jsonl         300 examples
    data/pretrain/corpus.txt       ~1.5 MB of prose, one paragraph per line
    data/pretrain/heldout.txt       200 more paragraphs from the same generator with no sentence in
                                   corpus.txt: the tiny model's general-text set (its loss before and after
                                   fine-tuning measures forgetting)

Each support example is one JSON object per line with the keys
id, category, order_id, product, prompt, completion. The completion always
starts with three header lines:

    category: refund
    order: 48213
    product: trail running shoes
    Thank you for reaching out. I have started a refund for your trail running shoes.

with "order: none" / "product: none" when the field is null.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SEED = 1234
SPLIT_SIZES = {"train": 3000, "validation": 300, "test": 300}
CORPUS_BYTES = 1_500_000
HELDOUT_PARAGRAPHS = 200
DATA_DIR = Path(__file__).resolve().parent

PROMPT_WORDS = (12, 60)  # min and max words in a customer message
REPLY_WORDS = (15, 35)  # min and max words in the reply sentences (after the headers)

# Which fields each category has. "required": always set, "optional": set in about
# half of the examples (only when the customer names it), "never": always null.
CATEGORY_RULES = {
    "refund": {"order": "required", "product": "required"},
    "return": {"order": "required", "product": "required"},
    "shipping_delay": {"order": "required", "product": "optional"},
    "damaged_item": {"order": "required", "product": "required"},
    "cancel_order": {"order": "required", "product": "optional"},
    "change_address": {"order": "required", "product": "never"},
    "account_access": {"order": "never", "product": "never"},
    "product_question": {"order": "never", "product": "required"},
}
CATEGORIES = list(CATEGORY_RULES)

# (name, name with an article, plural?)
PRODUCTS = [
    ("bamboo cutting board", "a bamboo cutting board", False),
    ("trail running shoes", "a pair of trail running shoes", True),
    ("wireless earbuds", "a pair of wireless earbuds", True),
    ("stainless steel water bottle", "a stainless steel water bottle", False),
    ("ceramic coffee mug", "a ceramic coffee mug", False),
    ("wool throw blanket", "a wool throw blanket", False),
    ("desk lamp", "a desk lamp", False),
    ("yoga mat", "a yoga mat", False),
    ("cast iron skillet", "a cast iron skillet", False),
    ("hiking backpack", "a hiking backpack", False),
    ("leather phone case", "a leather phone case", False),
    ("electric kettle", "an electric kettle", False),
    ("noise cancelling headphones", "a pair of noise cancelling headphones", True),
    ("linen bed sheets", "a set of linen bed sheets", True),
    ("cotton bath towels", "a set of cotton bath towels", True),
    ("smart watch", "a smart watch", False),
    ("portable charger", "a portable charger", False),
    ("bluetooth speaker", "a bluetooth speaker", False),
    ("french press", "a french press", False),
    ("glass food containers", "a set of glass food containers", True),
    ("knitted beanie", "a knitted beanie", False),
    ("rain jacket", "a rain jacket", False),
    ("garden hose", "a garden hose", False),
    ("bicycle helmet", "a bicycle helmet", False),
    ("camping lantern", "a camping lantern", False),
    ("mechanical keyboard", "a mechanical keyboard", False),
    ("wireless mouse", "a wireless mouse", False),
    ("standing desk converter", "a standing desk converter", False),
    ("scented candle set", "a scented candle set", False),
    ("ceramic plant pots", "a set of ceramic plant pots", True),
    ("herb seed kit", "a herb seed kit", False),
    ("kitchen knife set", "a kitchen knife set", False),
    ("travel pillow", "a travel pillow", False),
    ("polarised sunglasses", "a pair of polarised sunglasses", True),
    ("fitness tracker", "a fitness tracker", False),
    ("electric toothbrush", "an electric toothbrush", False),
    ("hair dryer", "a hair dryer", False),
    ("baby monitor", "a baby monitor", False),
    ("orthopedic dog bed", "an orthopedic dog bed", False),
    ("wooden jigsaw puzzle", "a wooden jigsaw puzzle", False),
    ("watercolour paint set", "a watercolour paint set", False),
    ("wall clock", "a wall clock", False),
]

NAMES = [
    "Maria",
    "Tom",
    "Aisha",
    "Daniel",
    "Priya",
    "Lukas",
    "Sofia",
    "James",
    "Mei",
    "Omar",
    "Hannah",
    "Carlos",
    "Ingrid",
    "Kofi",
    "Elena",
    "Ravi",
    "Grace",
    "Mateo",
    "Yuki",
    "Noah",
    "Fatima",
    "Oliver",
    "Chloe",
    "Samuel",
    "Leila",
    "Ben",
    "Nadia",
    "Felix",
    "Rosa",
    "Ethan",
    "Amara",
    "Jonas",
    "Clara",
    "Victor",
    "Zara",
    "Liam",
    "Ana",
    "Hugo",
    "Irene",
    "Tariq",
]
SHOPS = [
    "Hollow Oak Goods",
    "Brightcart",
    "Little Harbour Store",
    "Greenleaf Market",
    "Northwind Supply",
    "Pebble and Pine",
    "Sunday Basket",
    "Copperfield Home",
    "Blue Heron Outfitters",
    "Maple Lane Shop",
]
CARRIERS = ["Swiftline", "Parcelway", "BlueRoute Couriers", "Hopper Express", "Red Kite Delivery"]
CITIES = [
    "Riverton",
    "Ashford",
    "Milbrook",
    "Easthaven",
    "Corran",
    "Westby",
    "Larkfield",
    "Stonebridge",
    "Dunmere",
    "Highcliff",
    "Fairport",
    "Oakhurst",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COLOURS = ["black", "white", "sage green", "navy blue", "sand", "charcoal grey", "terracotta", "forest green"]
TIMES = [
    "seven in the morning",
    "half past nine",
    "noon",
    "two in the afternoon",
    "a quarter to five",
    "six in the evening",
]


# ---------------------------------------------------------------------------
# Customer messages
# ---------------------------------------------------------------------------

MOODS = ["neutral", "polite", "frustrated", "hurried"]

OPENINGS = {
    "neutral": ["", "", "Hi,", "Hello,", "Hi there,", "Hello there."],
    "polite": [
        "Hello,",
        "Good morning,",
        "Good afternoon,",
        "Good evening,",
        "Dear support team,",
        "Hello support team,",
        "Hi, I hope you are well.",
        "Hello, I hope you are having a good day.",
    ],
    "frustrated": [
        "This is getting frustrating.",
        "I am not happy right now.",
        "Honestly, I expected better.",
        "I have been patient, but this is too much.",
        "This is the second time I am writing.",
        "I am really disappointed.",
        "Not a great experience so far.",
    ],
    "hurried": [
        "Quick question.",
        "Need help fast, please.",
        "Short message, I am in a rush.",
        "Hi, quick one.",
        "",
    ],
}

CLOSINGS = {
    "neutral": ["", "", "Thanks.", "Thank you.", "Let me know.", "Thanks for your help."],
    "polite": [
        "Thank you so much.",
        "Many thanks for your help.",
        "Thanks in advance.",
        "I appreciate your help.",
        "Kind regards.",
        "Thank you for your time.",
        "Have a lovely day.",
    ],
    "frustrated": [
        "Please sort this out.",
        "I would like an answer soon.",
        "Please fix this quickly.",
        "I hope this gets resolved today.",
        "I expect a proper answer this time.",
        "Please do not ignore this message.",
    ],
    "hurried": ["Thanks.", "Quick reply appreciated.", "Cheers.", "Thanks, in a hurry.", ""],
}

SIGNOFFS = ["Best, {name}.", "Regards, {name}.", "Cheers, {name}.", "Thanks, {name}.", "{name}"]

# Ways of writing an order number inside a sentence. {oref} in a template becomes one of these.
ORDER_REFS = ["order {n}", "order #{n}", "order number {n}", "#{n}", "order no. {n}", "order ID {n}"]

# Core sentences. Placeholders: {oref} (e.g. "order #48213"), {Oref} (capitalised), {num} (bare
# number), {product}, {it}/{It} (it/they), {is}/{was}/{has}, {s} (verb ending: "comes"/"come").
CORE = {
    "refund": [
        "I would like a refund for the {product} from {oref}.",
        "Could you refund me for the {product}? {It} {was} part of {oref}.",
        "I sent back the {product} from {oref} two weeks ago and still have not received my money.",
        "Please refund the {product} I bought in {oref}.",
        "I want my money back for the {product} ({oref}).",
        "The {product} I ordered did not meet my expectations, so I am asking for a refund on {oref}.",
        "Can I get a refund on {oref}? The {product} {is} not what I expected.",
        "I was charged for the {product} in {oref}, but I returned {it} already. "
        "When will the refund come through?",
        "I am requesting a full refund for the {product}. My order number is {num}.",
        "I am writing to ask for my money back for the {product} that came with {oref}.",
        "How do I get refunded for the {product}? The order number is {num}.",
        "I returned the {product} last week. Could you check the refund for {oref}?",
    ],
    "return": [
        "I would like to return the {product} from {oref}.",
        "How can I send back the {product}? {It} {is} from {oref}.",
        "Can you send me a return label for the {product} in {oref}?",
        "The {product} from {oref} {is} the wrong size, and I want to return {it}.",
        "I need to return the {product} I received with {oref}.",
        "Is it still possible to return the {product}? I ordered {it} under {oref}.",
        "Please tell me how to return the {product} from {oref}.",
        "I would like to start a return for {oref}. The item is the {product}.",
        "The {product} {is} not right for me, so I want to return {it}. My order number is {num}.",
        "What is the return process for the {product}? It was order {num}.",
        "I changed my mind about the {product} and would like to send {it} back. This is about {oref}.",
    ],
    "shipping_delay_product": [
        "My {product} from {oref} still {has} not arrived.",
        "I ordered the {product} in {oref} ten days ago and the parcel is still not here.",
        "Where is my {product}? It was {oref}, and the tracking has not moved in days.",
        "The {product} I ordered should have arrived on Monday. The order number is {num}.",
        "I am still waiting for the {product} from {oref}.",
        "{Oref} with the {product} was due last week and nothing has arrived.",
        "Can you check on my {product}? {Oref} seems to be stuck somewhere.",
    ],
    "shipping_delay": [
        "{Oref} has not arrived yet.",
        "I am still waiting for {oref}. It was supposed to arrive last week.",
        "The tracking for {oref} has not changed since Monday.",
        "Can you tell me where {oref} is? The delivery date has passed.",
        "My parcel for {oref} is late.",
        "Has {oref} been shipped yet? I placed it over a week ago.",
        "My order number is {num} and the parcel still has not shown up.",
        "I was told {oref} would arrive in three days, and it has now been ten.",
    ],
    "damaged_item": [
        "The {product} from {oref} arrived broken.",
        "My {product} came damaged. This is about {oref}.",
        "I opened the box for {oref} and the {product} {was} cracked.",
        "The {product} I received in {oref} {has} a deep scratch on the front.",
        "Unfortunately the {product} arrived with a dent. My order number is {num}.",
        "The parcel for {oref} was crushed and the {product} inside {is} damaged.",
        "The {product} {was} in pieces when I opened the parcel. It was order {num}.",
        "Part of the {product} is missing and the rest is scratched. Please help with {oref}.",
        "The {product} from {oref} {is} not working, and the packaging was torn open.",
    ],
    "cancel_order_product": [
        "Can I still cancel {oref}? I ordered the {product} by mistake.",
        "I no longer need the {product}, so please cancel {oref}.",
        "I changed my mind about the {product}. Could you cancel {oref}?",
        "Please cancel the {product} I ordered. The order number is {num}.",
        "I would like to cancel {oref} for the {product} before it ships.",
    ],
    "cancel_order": [
        "Please cancel {oref}.",
        "I would like to cancel {oref} before it ships.",
        "Please stop {oref} from being shipped.",
        "Is it too late to cancel {oref}?",
        "Could you cancel my order? The order number is {num}.",
        "I need to cancel {oref} as soon as possible.",
    ],
    "change_address": [
        "I need to change the delivery address for {oref}.",
        "I moved last week. Can you send {oref} to my new address?",
        "Please update the shipping address on {oref}. I typed the wrong street name.",
        "Can the delivery address for {oref} still be changed?",
        "I made a mistake in the address for {oref}. The house number is wrong.",
        "Could {oref} go to my office instead of my home?",
        "The postcode on {oref} is wrong. Can you fix it before it ships?",
        "I would like my parcel delivered to a different address. My order number is {num}.",
    ],
    "account_access": [
        "I cannot log in to my account.",
        "I forgot my password and the reset email never arrives.",
        "My account is locked after too many attempts.",
        "The login page keeps saying my password is wrong, but I am sure it is right.",
        "I changed my email address and now I cannot access my account.",
        "The verification code never reaches my phone, so I cannot sign in.",
        "I get an error every time I try to sign in on the app.",
        "My account seems to have been deactivated and I do not know why.",
        "I cannot get into my account since yesterday.",
        "The password reset link says it has expired every time I click it.",
        "Someone may have changed my password, because I can no longer log in.",
    ],
}

# Product questions come as (topic, question) so that the reply can answer the topic.
PRODUCT_QUESTIONS = [
    ("stock", "{Is} the {product} in stock at the moment?"),
    ("stock", "When will the {product} be available again?"),
    ("stock", "Do you still sell the {product}? I could not add {it} to my basket."),
    ("warranty", "{Does} the {product} come with a warranty?"),
    ("warranty", "How long is the warranty on the {product}?"),
    ("colours", "{Is} the {product} available in other colours?"),
    ("colours", "Which colours {does} the {product} come in?"),
    ("care", "How should I clean the {product}?"),
    ("care", "What is the best way to take care of the {product}?"),
    ("size", "What are the exact dimensions of the {product}?"),
    ("size", "How big {is} the {product}? The photos make {it} hard to judge."),
    ("giftwrap", "Can you gift wrap the {product}?"),
    ("giftwrap", "I am thinking about buying the {product} as a present. Can {they} be gift wrapped?"),
]

DETAILS = {
    "refund": [
        "{It} did not fit my needs.",
        "The quality is lower than I hoped.",
        "I changed my mind after using {it} once.",
        "My bank statement still shows the full charge.",
        "I paid by card.",
        "I returned {it} in the original packaging.",
        "I have the receipt if you need it.",
    ],
    "return": [
        "The colour looks different from the photos.",
        "{It} {is} too small for me.",
        "I ordered two by mistake.",
        "{It} {is} still unused and in the box.",
        "I received {it} as a gift but already have one.",
        "I do not have a printer for the label.",
    ],
    "shipping_delay": [
        "I need it for a birthday on Saturday.",
        "The tracking page says it is in transit.",
        "I paid for express delivery.",
        "I have been home every day waiting for the courier.",
        "The estimated delivery date was three days ago.",
        "Nobody has left a note at my door.",
    ],
    "damaged_item": [
        "I have photos if you need them.",
        "The box looked fine from the outside.",
        "I would like a replacement if possible.",
        "It cannot be used like this.",
        "The courier left the parcel in the rain.",
        "This was meant to be a gift.",
    ],
    "cancel_order": [
        "I found what I needed in a local shop.",
        "I ordered twice by accident.",
        "I placed it only an hour ago.",
        "I used the wrong payment card.",
        "My plans have changed.",
    ],
    "change_address": [
        "The new address is on the same street, just a different number.",
        "I will be away from home next week.",
        "I can send the new address in my next message.",
        "My neighbour can also take the parcel.",
        "I entered my old address by accident.",
    ],
    "account_access": [
        "I have tried three times already.",
        "I use the same email as always.",
        "I checked my spam folder.",
        "I tried both the app and the website.",
        "It worked fine until yesterday.",
        "I need to see my order history.",
        "I have cleared my browser cache.",
    ],
    "product_question": [
        "I want to buy {it} as a gift.",
        "I could not find this on the product page.",
        "I am comparing a few shops before I decide.",
        "I would like to order this week.",
        "A friend recommended {it} to me.",
    ],
}

# ---------------------------------------------------------------------------
# Assistant replies (the sentences after the three header lines)
# ---------------------------------------------------------------------------

REPLY_OPENERS = {
    "shared": [
        "Thank you for reaching out.",
        "Thanks for contacting us.",
        "Thank you for your message.",
        "Thanks for getting in touch.",
        "Thank you for writing to us.",
    ],
    "refund": ["Thanks for your patience.", "I am sorry the {product} did not work out for you."],
    "return": ["Thanks for letting us know.", "No problem at all."],
    "shipping_delay": ["I am sorry for the wait.", "I am sorry your parcel is late."],
    "damaged_item": ["I am very sorry about this.", "I am so sorry your {product} arrived damaged."],
    "cancel_order": ["No problem at all.", "Thanks for letting us know quickly."],
    "change_address": ["Thanks for letting us know.", "Happy to help with that."],
    "account_access": ["I am sorry for the trouble.", "Sorry you are having trouble signing in."],
    "product_question": ["Great question.", "Thanks for your interest."],
}

# Reply bodies. {order} is the bare number; the product placeholders work as in CORE.
REPLY_BODIES = {
    "refund": [
        "I have started a refund for your {product}, and you will see it within five working days.",
        "A full refund for your {product} from order {order} is now on its way to "
        "your original payment method.",
        "I have issued a refund for the {product}, "
        "and it should reach your account in three to five working days.",
        "Your refund for order {order} has been approved, "
        "and the money will be back on your card within a week.",
        "I have refunded the {product} in order {order}, and you will get a confirmation email shortly.",
    ],
    "return": [
        "I have emailed you a prepaid return label for your {product}, "
        "so please send {it} back within fourteen days.",
        "You can return the {product} from order {order} using the label I have just sent to your email.",
        "I have opened a return for order {order}, and a free return label is waiting in your inbox.",
        "Please pack the {product} in the original box, attach the label we sent, "
        "and drop the parcel at any post office.",
        "Your return for the {product} is approved, "
        "and we will refund you as soon as the parcel reaches our warehouse.",
    ],
    "shipping_delay_product": [
        "I have asked the courier to locate your {product}, and I will email you an update within two days.",
        "Your {product} from order {order} is moving again and should arrive within three working days.",
        "I have opened an investigation for order {order}, "
        "and if your {product} {is} lost we will send a replacement free of charge.",
    ],
    "shipping_delay": [
        "I have asked the courier to check order {order}, and I will email you an update within two days.",
        "Order {order} is moving again and should reach you within three working days.",
        "I have opened an investigation for order {order}, "
        "and if the parcel is lost we will send a replacement free of charge.",
        "The courier has confirmed that order {order} is at your local depot and will be delivered tomorrow.",
    ],
    "damaged_item": [
        "A replacement for your {product} is on its way, and you do not need to send the damaged one back.",
        "I have arranged a free replacement for your {product} from order {order}, "
        "and it will ship tomorrow.",
        "You can choose between a replacement and a full refund for the {product}, "
        "so just tell us which you prefer.",
        "I have sent a replacement for the {product} in order {order} by express delivery at no extra cost.",
    ],
    "cancel_order_product": [
        "I have cancelled order {order} for the {product}, "
        "and you will receive a confirmation email shortly.",
        "Order {order} with the {product} is now cancelled, and you will not be charged.",
    ],
    "cancel_order": [
        "I have cancelled order {order}, and you will not be charged for it.",
        "Order {order} is now cancelled, and any payment will be returned within three working days.",
        "I have stopped order {order} before it left our warehouse, and a confirmation email is on its way.",
    ],
    "change_address": [
        "Please reply with the full new address for order {order}, "
        "and I will update it before the parcel ships.",
        "The delivery address on order {order} can still be changed, so please send the new street, "
        "house number and postcode.",
        "I have put order {order} on hold so that we can update the address as soon as you send it.",
    ],
    "account_access": [
        "I have sent a password reset link to the email address on your account, "
        "so please check your spam folder too.",
        "I have unlocked your account, so you can sign in again now and choose a new password.",
        "For your security, please use the reset link I have just emailed you, "
        "and reply if it does not work.",
        "I have sent a new verification code to your phone, "
        "and it will stay valid for the next fifteen minutes.",
    ],
    "product_question_stock": [
        "The {product} {is} in stock right now and usually ship{s} within one working day.",
        "We expect new stock of the {product} next week, and you can ask for an email when {they} {is} back.",
    ],
    "product_question_warranty": [
        "The {product} come{s} with a two-year warranty that covers any manufacturing faults.",
        "Our two-year warranty covers the {product}, so any fault is repaired or replaced for free.",
    ],
    "product_question_colours": [
        "The {product} come{s} in {colour} and {colour2}, and you can pick the colour on the product page.",
        "Right now the {product} {is} available in {colour}, {colour2} and a limited {colour3} edition.",
    ],
    "product_question_care": [
        "You can clean the {product} with a soft damp cloth, but please avoid strong detergents.",
        "The care guide for the {product} is on the product page, "
        "and a gentle wipe with a damp cloth is usually enough.",
    ],
    "product_question_size": [
        "You will find the exact dimensions of the {product} in the details section, just below the photos.",
        "The size of the {product} is listed on the product page, "
        "and I am happy to measure anything else for you.",
    ],
    "product_question_giftwrap": [
        "Yes, we can gift wrap the {product}, so just tick the gift option at checkout.",
        "We can wrap the {product} in recycled paper and add a handwritten card at no extra cost.",
    ],
}


def word_count(text: str) -> int:
    """Number of whitespace-separated words in text."""
    return len(text.split())


def grammar(plural: bool) -> dict:
    """Pronoun and verb forms that agree with a singular or plural product name."""
    if plural:
        return {
            "it": "them",
            "It": "They",
            "they": "they",
            "is": "are",
            "Is": "Are",
            "was": "were",
            "has": "have",
            "does": "do",
            "Does": "Do",
            "s": "",
        }
    return {
        "it": "it",
        "It": "It",
        "they": "it",
        "is": "is",
        "Is": "Is",
        "was": "was",
        "has": "has",
        "does": "does",
        "Does": "Does",
        "s": "s",
    }


def fill(template: str, slots: dict) -> str:
    """Fill the {placeholders} in template from slots."""
    return template.format_map(slots)


def capitalise(text: str) -> str:
    """Upper-case the first character only."""
    return text[:1].upper() + text[1:]


def order_ref(rng: random.Random, number: str) -> str:
    """One of several ways a customer writes an order number."""
    return rng.choice(ORDER_REFS).format(n=number)


def customer_message(
    rng: random.Random, category: str, order: str | None, product: tuple | None
) -> tuple[str, str]:
    """Build one customer message; returns (message, product_question_topic or '')."""
    mood = rng.choice(MOODS)
    slots = {"num": order or "", "product": product[0] if product else ""}
    slots.update(grammar(product[2] if product else False))
    if order:
        ref = order_ref(rng, order)
        slots["oref"] = ref
        slots["Oref"] = capitalise(ref)
    topic = ""
    if category == "product_question":
        topic, core = rng.choice(PRODUCT_QUESTIONS)
    elif category in ("shipping_delay", "cancel_order") and product:
        core = rng.choice(CORE[category + "_product"])
    else:
        core = rng.choice(CORE[category])
    opening = rng.choice(OPENINGS[mood])
    core = fill(core, slots)
    if opening.endswith(",") and not core.startswith("I "):
        core = core[:1].lower() + core[1:]  # "Hi, could you ..." rather than "Hi, Could you ..."
    parts = [opening, core]
    for detail in rng.sample(DETAILS[category], rng.choice([0, 0, 1, 1, 2])):
        parts.append(fill(detail, slots))
    parts.append(rng.choice(CLOSINGS[mood]))
    if rng.random() < 0.25:
        parts.append(rng.choice(SIGNOFFS).format(name=rng.choice(NAMES)))
    message = " ".join(part for part in parts if part)
    return message, topic


def reply_sentences(
    rng: random.Random, category: str, order: str | None, product: tuple | None, topic: str
) -> str:
    """Build the one or two polite sentences after the header lines."""
    slots = {"order": order or "", "product": product[0] if product else ""}
    slots.update(grammar(product[2] if product else False))
    colours = rng.sample(COLOURS, 3)
    slots.update({"colour": colours[0], "colour2": colours[1], "colour3": colours[2]})
    if category == "product_question":
        key = "product_question_" + topic
    elif category in ("shipping_delay", "cancel_order") and product:
        key = category + "_product"
    else:
        key = category
    body = fill(rng.choice(REPLY_BODIES[key]), slots)
    openers = REPLY_OPENERS["shared"] + REPLY_OPENERS[category]
    if not product:
        openers = [opener for opener in openers if "{product}" not in opener]
    if rng.random() < 0.8:
        return fill(rng.choice(openers), slots) + " " + body
    return body


def completion_text(category: str, order: str | None, product: tuple | None, sentences: str) -> str:
    """The assistant reply: three header lines, then the sentences."""
    lines = [
        f"category: {category}",
        f"order: {order if order else 'none'}",
        f"product: {product[0] if product else 'none'}",
        sentences,
    ]
    return "\n".join(lines)


def pick_fields(rng: random.Random, category: str, order_pool: list[int]) -> tuple[str | None, tuple | None]:
    """Choose order number and product for a category, following CATEGORY_RULES."""
    rule = CATEGORY_RULES[category]
    order = None
    if rule["order"] == "required" or (rule["order"] == "optional" and rng.random() < 0.5):
        order = str(order_pool.pop())
    product = None
    if rule["product"] == "required" or (rule["product"] == "optional" and rng.random() < 0.5):
        product = rng.choice(PRODUCTS)
    return order, product


def make_example(rng: random.Random, category: str, order_pool: list[int]) -> dict:
    """One example whose message and reply are within the word limits."""
    order, product = pick_fields(rng, category, order_pool)
    while True:
        message, topic = customer_message(rng, category, order, product)
        if PROMPT_WORDS[0] <= word_count(message) <= PROMPT_WORDS[1]:
            break
    while True:
        sentences = reply_sentences(rng, category, order, product, topic)
        if REPLY_WORDS[0] <= word_count(sentences) <= REPLY_WORDS[1]:
            break
    return {
        "category": category,
        "order_id": order,
        "product": product[0] if product else None,
        "prompt": message,
        "completion": completion_text(category, order, product, sentences),
    }


def order_pools(seed: int) -> dict[str, list[int]]:
    """Disjoint, shuffled pools of 5-digit order numbers for each split and for the corpus."""
    numbers = list(range(10000, 100000))
    random.Random(seed).shuffle(numbers)
    return {
        "train": numbers[:50000],
        "validation": numbers[50000:60000],
        "test": numbers[60000:70000],
        "corpus": numbers[70000:],
    }


def generate_splits(seed: int = SEED, sizes: dict | None = None) -> dict[str, list[dict]]:
    """All support examples, split by name; prompts are unique across all splits."""
    sizes = sizes or SPLIT_SIZES
    pools = order_pools(seed)
    seen_prompts: set[str] = set()
    splits = {}
    for split_index, (split, size) in enumerate(sizes.items()):
        rng = random.Random(seed * 100 + split_index)
        categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(size)]
        rng.shuffle(categories)
        rows = []
        for i, category in enumerate(categories, start=1):
            example = make_example(rng, category, pools[split])
            while example["prompt"] in seen_prompts:
                example = make_example(rng, category, pools[split])
            seen_prompts.add(example["prompt"])
            rows.append({"id": f"{split}-{i:05d}", **example})
        splits[split] = rows
    return splits


# ---------------------------------------------------------------------------
# Pretraining corpus: prose in the same vocabulary, never in the reply format
# ---------------------------------------------------------------------------


def corpus_slots(rng: random.Random, pool: list[int]) -> dict:
    """Random names, numbers and products for one paragraph."""
    products = rng.sample(PRODUCTS, 3)
    names = rng.sample(NAMES, 3)
    day_index = rng.randrange(5)
    slots = {
        "order": str(rng.choice(pool)),
        "order2": str(rng.choice(pool)),
        "product": products[0][0],
        "a_product": products[0][1],
        "product2": products[1][0],
        "a_product2": products[1][1],
        "product3": products[2][0],
        "name": names[0],
        "name2": names[1],
        "name3": names[2],
        "shop": rng.choice(SHOPS),
        "carrier": rng.choice(CARRIERS),
        "city": rng.choice(CITIES),
        "city2": rng.choice(CITIES),
        "day": DAYS[day_index],
        "day2": DAYS[day_index + rng.randrange(1, 3)],
        "n": rng.choice(NUMBER_WORDS),
        "n2": rng.choice(NUMBER_WORDS),
        "shelf": f"{rng.choice('ABCDEFGH')}{rng.randrange(1, 40)}",
        "time": rng.choice(TIMES),
        "colour": rng.choice(COLOURS),
        "price": f"{rng.randrange(8, 150)}.{rng.choice(['00', '49', '95', '99'])}",
    }
    slots.update(grammar(products[0][2]))
    slots["Product"] = capitalise(slots["product"])
    slots["A_product"] = capitalise(slots["a_product"])
    return slots


# Each paragraph kind is (openings, middles, endings). A paragraph is one opening, a few
# middles in random order and one ending; the ending usually repeats the order number or
# product from the opening, so a model trained on it learns to copy them.
PARAGRAPHS = {
    "parcel_journey": (
        [
            "Parcel {order} left the {city} depot on {day} morning.",
            "On {day}, the warehouse team packed order {order}, which held {a_product} for {name}.",
            "Order {order} was picked from shelf {shelf} at {time} on {day}.",
            "{name} ordered {a_product} from {shop}, and the parcel was given the number {order}.",
        ],
        [
            "The driver scanned parcel {order} at {time} and loaded it onto a van bound for {city2}.",
            "A storm slowed the trucks, so parcel {order} spent a night in a sorting centre.",
            "The tracking page for order {order} showed the words in transit for two whole days.",
            "{carrier} moved the parcel through {city2}, where it waited for the next van.",
            "Inside the box, the {product} sat snugly in recycled paper.",
            "{name} checked the tracking page every morning and saw the same message about order {order}.",
            "Someone at the depot noticed a torn label and printed a new one for parcel {order}.",
            "The van broke down near {city2}, and the driver apologised to everyone on the route.",
            "The sorting machine read the barcode on parcel {order} and sent it down the right belt.",
            "A note on the box asked the courier to keep the {product} dry.",
        ],
        [
            "By {day2}, parcel {order} was at the door, and {name} finally unpacked the {product}.",
            "On {day2} the courier handed parcel {order} to {name}, who signed for it with a smile.",
            "Late on {day2}, order {order} arrived, and the {product} inside {was} in perfect shape.",
            "When parcel {order} finally arrived on {day2}, {name} wrote a short thank you note to {shop}.",
            "In the end, order {order} took {n} days, and the {product} {was} worth the wait.",
        ],
    ),
    "customer_diary": (
        [
            "Dear diary, today I ordered {a_product} from {shop}, "
            "and the confirmation email said order {order}.",
            "{day}. I finally bought {a_product}, and I wrote the order number {order} on a sticky note.",
            "My old {product2} broke last week, so on {day} I ordered {a_product} from {shop}.",
            "It is {day} evening and I am waiting for order {order}, my new {product}.",
        ],
        [
            "The website promised delivery within {n} working days.",
            "I checked the tracking for order {order} twice before lunch, which is silly, I know.",
            "My neighbour {name2} says {shop} is always quick with deliveries.",
            "I paid {price} for {it}, which felt like a lot, but the reviews were kind.",
            "The shop sent a polite email thanking me for my order and wishing me a lovely day.",
            "I keep thinking about where to put the {product} when {they} arrive{s}.",
            "{carrier} sent a text saying the parcel would arrive between {time} and the evening.",
            "I also looked at {a_product2}, but I will wait until next month for that.",
            "If the {product} {is} not right, the return window is thirty days, "
            "so there is no need to worry.",
        ],
        [
            "On {day2} order {order} arrived, and I love the {product} already.",
            "Now it is {day2}, the {product} {is} here, and I have thrown away the note that said {order}.",
            "The {product} came on {day2}, and I wrote a happy review for {shop} before bed.",
            "Order {order} is finally on my kitchen table, and the {product} look{s} just like the photos.",
        ],
    ),
    "product_description": (
        [
            "The {product} from {shop} {is} made for everyday use.",
            "Meet the {product}, one of the most popular items at {shop} this season.",
            "Our {product} {is} designed, tested and packed with care.",
            "The {product} come{s} in {colour} and a few other shades, and {they} cost{s} {price}.",
        ],
        [
            "The materials are chosen to last for years, not months.",
            "The {product} ship{s} in recyclable packaging with a short care guide.",
            "Customers often buy the {product} together with the {product2}.",
            "{It} {is} covered by a two-year warranty against manufacturing faults.",
            "If you are not happy, you can return {it} within thirty days for a full refund.",
            "Our team used the {product} at home for months before adding {it} to the shop.",
            "To keep {it} looking new, wipe {it} with a soft damp cloth and avoid strong detergents.",
            "Orders placed before noon usually leave our warehouse the same day.",
            "The exact dimensions are listed below the photos on the product page.",
            "Gift wrapping is available at checkout for a small extra charge.",
        ],
        [
            "In short, the {product} {is} a simple, reliable choice, and we think you will enjoy {it}.",
            "Add the {product} to your basket today, and {they} can be at your door within {n} working days.",
            "Thousands of customers already own the {product}, and many of them come back for a second one.",
            "If you have a question about the {product}, our support team is happy to help.",
        ],
    ),
    "store_policy": (
        [
            "At {shop}, customers can return most items within thirty days of delivery.",
            "Our refund policy is simple, and we try to keep it fair for everyone.",
            "This page explains how cancellations and address changes work at {shop}.",
            "We want every customer to feel looked after, even when something goes wrong with an order.",
        ],
        [
            "To start a return, the customer asks for a prepaid label and sends the item "
            "back in its original box.",
            "Refunds go back to the original payment method within five working days after the "
            "parcel reaches our warehouse.",
            "An order can be cancelled free of charge until it leaves the warehouse.",
            "The delivery address can be changed as long as the parcel has not been shipped yet.",
            "Damaged items are replaced at no cost, "
            "and the customer does not need to send the broken one back.",
            "Sale items can be returned too, although gift cards cannot.",
            "If a parcel is late by more than a week, we open an investigation with the courier.",
            "For example, if order {order} arrived on {day}, "
            "the customer has thirty days from {day} to send it back.",
            "A customer who ordered {a_product} by mistake can cancel the order within the first "
            "hour without any questions.",
            "Account problems, such as a forgotten password, are solved with a reset link sent by email.",
        ],
        [
            "So if order {order} needs a refund, the money for order {order} is usually back within a week.",
            "In every case, we thank the customer for reaching out and explain the next step clearly.",
            "If anything is unclear, please contact our support team, and we will be glad to help.",
            "We review this policy every year to make sure it stays fair and easy to follow.",
        ],
    ),
    "faq_prose": (
        [
            "Many customers ask how long a refund takes.",
            "A common question is what to do when a parcel is late.",
            "People often wonder whether an order can still be cancelled.",
            "We are often asked how to change the delivery address after ordering.",
            "Some customers cannot sign in to their account and are not sure why.",
            "Another frequent question is what happens when an item arrives damaged.",
        ],
        [
            "The short answer is that most refunds arrive within five working days.",
            "The first step is always to check the tracking page for the order.",
            "An order can be cancelled until it leaves the warehouse, which is usually the same day.",
            "The address can be updated as long as the parcel has not been shipped.",
            "A password reset link usually solves sign-in problems within minutes.",
            "Photos of the damage help our team send a replacement quickly.",
            "Suppose {name} bought {a_product} in order {order} and changed their mind the same afternoon.",
            "In that case, {name} would simply mention order {order} when contacting the support team.",
            "Our team always starts by thanking the customer and apologising for any inconvenience.",
            "It also helps to check the spam folder, because our emails sometimes land there.",
        ],
        [
            "Either way, mentioning the order number, such as {order}, makes everything faster.",
            "If none of this helps, our support team is happy to look into it personally.",
            "We hope this answers the question, and we are always glad to hear from our customers.",
            "With the order number {order} in hand, "
            "the support team can usually fix the problem in one reply.",
        ],
    ),
    "warehouse_notes": (
        [
            "Note for the {day} shift: order {order} is urgent and should leave before {time}.",
            "Warehouse log, {day}. Shelf {shelf} is running low on the {product}.",
            "Reminder for the packing team about order {order} and the {product} inside it.",
            "Stock check on {day}: the {product} {is} on shelf {shelf}, next to the {product2}.",
        ],
        [
            "Order {order} contains the {product}, so please wrap {it} in two layers of paper.",
            "The {carrier} van arrives at {time}, so everything for {city} must be packed by then.",
            "We received {n} returns yesterday, mostly the {product2}, and all of them were unused.",
            "Please scan every parcel twice, because the label printer skipped a line on {day}.",
            "A customer reported that the {product} arrived scratched, so use the thicker boxes for now.",
            "The new shelves for the {product3} are finally up near the loading door.",
            "{name} is training two new packers this week, so please be patient with them.",
            "Order {order2} was cancelled by the customer, so take it out of the packing queue.",
        ],
        [
            "Double check order {order} before it goes, and write your initials on the slip.",
            "Once order {order} is on the van, mark it as shipped in the system.",
            "Thanks everyone, and remember that shelf {shelf} still needs the {product} restocked.",
            "If anything is missing for order {order}, tell {name} before the end of the shift.",
        ],
    ),
    "colleague_email": (
        [
            "Hi {name2}, could you take a look at order {order}?",
            "Hello {name2}, I need a second pair of eyes on order {order}.",
            "Hi team, quick update about order {order} from this morning.",
            "Dear {name2}, thank you for covering my shift on {day}.",
        ],
        [
            "The customer, {name3}, says the {product} arrived with a cracked corner.",
            "The tracking for order {order} has not moved since {day}, "
            "and the customer is understandably worried.",
            "I have already apologised and promised an update by tomorrow.",
            "The customer would like a refund rather than a replacement, which is fine by our policy.",
            "I checked the stock, and we have {n} of the {product} left on shelf {shelf}.",
            "The customer moved house and asked us to change the delivery address before the parcel ships.",
            "I sent a password reset link to another customer who could not sign in to their account.",
            "{carrier} told me the van for {city} was delayed by the weather.",
        ],
        [
            "Could you send a replacement for the {product} in order {order} today? Thanks, {name}.",
            "Let me know what you find out about order {order}. Best wishes, {name}.",
            "I will keep an eye on order {order} and update the customer on {day2}. Thanks again, {name}.",
            "Please reply when you can, and thank you for all your help this week. Kind regards, {name}.",
        ],
    ),
    "shop_story": (
        [
            "{name} runs a small online shop called {shop} from a spare room in {city}.",
            "Every morning, {name} opens the laptop and reads the messages that came in overnight.",
            "The busiest week of the year at {shop} always starts on a {day}.",
            "{name} started {shop} with a single product, {a_product}.",
        ],
        [
            "One customer, {name2}, wrote that order {order} had not arrived, "
            "so {name} called {carrier} straight away.",
            "Another customer wanted to return the {product2} because the colour was not quite right.",
            "{name} always starts a reply with a warm thank you, even when the customer is upset.",
            "That day, {n} orders went out, and each one had a handwritten note inside.",
            "A parcel came back damaged, and {name} sent a new one the same afternoon without being asked.",
            "The {product} {was} selling faster than ever, and the shelf was nearly empty by noon.",
            "A regular customer asked whether the {product} could be gift wrapped, "
            "and of course {they} could.",
            "{name} updated the delivery address for a customer who had just moved to {city2}.",
        ],
        [
            "By evening, {name2} wrote back to say that order {order} had arrived, and {name} smiled.",
            "It was a long day, but every customer of {shop} got an answer before dinner.",
            "That night {name} packed the last {product} and wrote a thank you card for order {order}.",
            "Small shops like {shop} survive because customers remember how they were treated.",
        ],
    ),
    "support_training": (
        [
            "When a customer writes that order {order} is late, "
            "a good agent first thanks them for reaching out.",
            "New support agents at {shop} learn a simple rule: read the whole message before answering.",
            "Imagine a customer whose {product} arrived broken.",
            "Training note for new agents about refunds, returns and cancellations.",
        ],
        [
            "The agent then finds the order number, such as {order}, and checks the tracking.",
            "Every reply should be short, polite and clear about the next step.",
            "If the item is damaged, the agent apologises and offers a replacement or a refund.",
            "If the customer wants to cancel, "
            "the agent checks whether the parcel has already left the warehouse.",
            "For account problems, the agent sends a password reset link and suggests "
            "checking the spam folder.",
            "When a customer asks about a product, "
            "the agent answers the question and points to the product page.",
            "It is important to repeat the exact order number, {order}, "
            "so the customer knows it is the right one.",
            "The agent never promises a date that the courier cannot keep.",
        ],
        [
            "In the case of order {order}, the agent wrote a friendly reply, and the customer was happy.",
            "So the {product} {was} replaced within two days, and the customer thanked the team.",
            "Good support is mostly patience, kindness and repeating the right details back to the customer.",
            "After a few weeks, these steps become second nature for every agent at {shop}.",
        ],
    ),
    "account_story": (
        [
            "On {day}, {name} tried to sign in to the {shop} app and got an error.",
            "{name} had forgotten the password to the {shop} account again.",
            "After changing phones, {name} could no longer receive the verification code.",
        ],
        [
            "The reset email took a few minutes to arrive and landed in the spam folder.",
            "The support team unlocked the account and asked {name} to choose a new password.",
            "{name} wanted to see the order history, because order {order} was still on the way.",
            "The new password needed at least twelve characters, so {name} wrote a long one.",
            "A friendly agent explained that the account had been locked after too many attempts.",
            "The website and the app both showed the same message, which was confusing.",
            "{name} checked the spam folder twice before the reset link finally appeared.",
            "The verification code was sent to an old phone number, which explained everything.",
            "{name} wrote to support, and an agent replied within the hour with clear steps.",
            "Clearing the browser cache did not help, but the reset link did.",
        ],
        [
            "Once signed in, {name} checked order {order} and saw that the {product} had shipped.",
            "By the evening, {name} could sign in again and sent a short thank you to support.",
            "Since then, {name} has kept the password in a safe place, just in case.",
            "Back in the account, {name} found order {order} and the tracking for the {product} at last.",
        ],
    ),
    "courier_day": (
        [
            "{name} drives a van for {carrier} in {city}, and {day} is always the busiest day.",
            "At {time} on {day}, the {carrier} van was loaded with {n} dozen parcels.",
            "The first stop of the day was parcel {order}, a heavy box for a house near the river in {city}.",
        ],
        [
            "Parcel {order} was addressed to {name2}, who had asked for it to be left with a neighbour.",
            "Rain made the labels hard to read, so {name} checked each barcode with the scanner.",
            "One customer had changed the delivery address that morning, "
            "and the new route appeared on the screen.",
            "A dog barked at every door on the street, but nobody was home to sign for the parcels.",
            "{name} left a card saying that parcel {order2} could be collected from the depot.",
            "The van stopped for lunch in {city2}, and {name} checked the list of late deliveries.",
            "A customer ran out in slippers to thank {name} for bringing the {product} before the weekend.",
            "The scanner beeped twice for parcel {order}, which meant it needed a signature.",
        ],
        [
            "At the end of the route, parcel {order} was the last one signed for, and {name} drove home.",
            "By {time}, every parcel but one had been delivered, and parcel {order2} went back to the depot.",
            "On the way back, {name} remembered parcel {order} and smiled, "
            "because that customer had waited a long time.",
        ],
    ),
    "product_review": (
        [
            "I bought {a_product} from {shop} last month, and here is my honest review.",
            "Five stars for the {product}, and I do not give five stars easily.",
            "I was unsure about the {product} at first, but it has grown on me.",
        ],
        [
            "The parcel arrived {n} days after I ordered, which was faster than promised.",
            "The {product} look{s} better in person than in the photos.",
            "The colour is a soft {colour}, close to what the product page showed.",
            "I had to contact support once, and they replied politely the same day.",
            "The price of {price} felt fair for the quality.",
            "The packaging was plastic free, which I appreciate.",
            "My only complaint is that the instructions were very short.",
            "I also ordered the {product2}, and both items came in the same box.",
        ],
        [
            "Overall, I would buy the {product} again, and I have already told my friends about {it}.",
            "If you are thinking about the {product}, I can recommend {it} without hesitation.",
            "Three weeks later, I still use the {product} every single day.",
        ],
    ),
    "returns_desk": (
        [
            "The returns desk at {shop} opens at {time}, and on {day} there were {n} parcels waiting.",
            "Return {order} came back to the warehouse on {day} with a short note inside.",
            "{name} works on the returns desk, where every parcel that comes back is opened and checked.",
        ],
        [
            "The note said that the {product} {was} the wrong size, and the customer wanted a refund.",
            "{name} checked that the {product} {was} unused and still had the tags.",
            "Parcel {order} held the {product} in the original box, so the refund could start at once.",
            "One return had no order number at all, so {name} searched the system by the customer's name.",
            "A damaged item went to a separate shelf, where it would be checked by the repair team.",
            "The refund system sent each customer an email as soon as the return was accepted.",
            "Most returns were clothes, but a few were kitchen items like the {product2}.",
        ],
        [
            "By the end of the morning, the refund for return {order} was on its way to the customer.",
            "{name} stamped return {order} as complete and moved on to the next box.",
            "The {product} from return {order} went back on shelf {shelf}, ready for a new owner.",
        ],
    ),
}


def paragraph(rng: random.Random, pool: list[int]) -> str:
    """One prose paragraph in the shop domain."""
    openings, middles, endings = PARAGRAPHS[rng.choice(list(PARAGRAPHS))]
    slots = corpus_slots(rng, pool)
    sentences = [rng.choice(openings)]
    sentences += rng.sample(middles, rng.randint(3, 6))
    sentences.append(rng.choice(endings))
    return " ".join(fill(sentence, slots) for sentence in sentences)


def generate_corpus(seed: int = SEED, target_bytes: int = CORPUS_BYTES) -> list[str]:
    """Paragraphs of domain prose adding up to at least target_bytes (one per line)."""
    rng = random.Random(seed + 7)
    pool = order_pools(seed)["corpus"]
    lines: list[str] = []
    size = 0
    while size < target_bytes:
        text = paragraph(rng, pool)
        lines.append(text)
        size += len(text.encode("utf-8")) + 1
    return lines


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """A paragraph's sentences, split after '.', '!' or '?'."""
    return [part.strip() for part in SENTENCE_END.split(text) if part.strip()]


def normalised(sentence: str) -> str:
    """A sentence compared without case, punctuation or repeated spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", sentence.lower()).split())


def generate_heldout(seed: int = SEED, count: int = HELDOUT_PARAGRAPHS, min_sentences: int = 3) -> list[str]:
    """Paragraphs from the corpus's generator in which no sentence (normalised) is one the corpus holds.

    The generator fills templates, so most of its fixed sentences recur in corpus.txt: each draw keeps only
    the sentences the corpus never had (new names, order numbers, products, days), each once, and a paragraph
    needs min_sentences of them. Text from the stand-in's own pretraining distribution (shop-domain prose)
    that it never read, not text unlike the task.
    """
    rng = random.Random(seed + 8)
    pool = order_pools(seed)["corpus"]
    seen = {normalised(s) for text in generate_corpus(seed) for s in sentences(text)}
    lines: list[str] = []
    while len(lines) < count:
        fresh = [s for s in sentences(paragraph(rng, pool)) if normalised(s) not in seen]
        if len(fresh) >= min_sentences:
            lines.append(" ".join(fresh))
            seen.update(normalised(s) for s in fresh)
    return lines


# ---------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------

HEADER_PATTERN = re.compile(r"(category|order|product)\s*:", re.IGNORECASE)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write rows as one JSON object per line (UTF-8, '\\n' line endings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(out_dir: Path = DATA_DIR, corpus_bytes: int = CORPUS_BYTES) -> None:
    """Write support/*.jsonl and pretrain/corpus.txt under out_dir."""
    out_dir = Path(out_dir)
    splits = generate_splits()
    for split, rows in splits.items():
        write_jsonl(out_dir / "support" / f"{split}.jsonl", rows)
    lines = generate_corpus(target_bytes=corpus_bytes)
    for line in lines:
        if HEADER_PATTERN.search(line):
            raise ValueError(f"corpus paragraph uses the reply header format, which it must not: {line[:80]}")
    corpus_path = out_dir / "pretrain" / "corpus.txt"
    corpus_path.parent.mkdir(parents=True, exist_ok=True)
    with corpus_path.open("w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    with (out_dir / "pretrain" / "heldout.txt").open("w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(generate_heldout()) + "\n")
    sizes = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    print(f"wrote {out_dir / 'support'} ({sizes}) and {corpus_path} ({corpus_path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
