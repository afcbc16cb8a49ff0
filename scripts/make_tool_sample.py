"""Write the bundled tool-calling sample, src/tunesmith/samples/tool_calls.jsonl.

A customer-support assistant of an outdoor-gear shop ("Northwind Outfitters") with six tools,
in OpenAI's chat fine-tuning format: tool definitions on each row ("tools"), assistant turns
with "tool_calls" whose arguments are JSON strings, tool turns with "tool_call_id". Each row
is one of four kinds:

- call:     the user asks for something a tool does; the row ends with the assistant's call
- answered: the same, then the tool's result and the assistant's answer in text
- parallel: two calls in one assistant turn (two orders, or two different questions)
- no tool:  policy questions, thanks, or a request missing the order number; a text answer

Each row offers three of the six tools (the ones it needs and others picked at random, in a
random order), so the model has to choose. Seeded: running it again writes the same file.

    .venv/bin/python scripts/make_tool_sample.py [--rows 300] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import string
from datetime import date, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "samples" / "tool_calls.jsonl"
SEED = 22
SHOP = "Northwind Outfitters"
SYSTEM = (
    f"You are the support assistant of {SHOP}, an outdoor-gear shop. Call a tool when the customer's request "
    "needs one; otherwise answer briefly."
)
TOOLS_PER_ROW = 3
SHARES = {"call": 0.5, "answered": 0.22, "parallel": 0.06}  # the rest: no tool

REFUND_REASONS = ["damaged", "wrong_item", "not_as_described", "late_delivery", "no_longer_needed"]
CANCEL_REASONS = ["changed_mind", "found_cheaper", "ordered_by_mistake"]
CARRIERS = ["UPS", "FedEx", "DHL"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _function(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


ORDER_ID = {"type": "string", "description": "Order number, like NW-104233."}
TOOLS = {
    "get_order_status": _function("get_order_status", "Look up the status of an order.", {"order_id": ORDER_ID},
                                  ["order_id"]),
    "cancel_order": _function("cancel_order", "Cancel an order that has not shipped yet.",
                              {"order_id": ORDER_ID, "reason": {"type": "string", "enum": CANCEL_REASONS}},
                              ["order_id"]),
    "request_refund": _function("request_refund", "Start a refund for a delivered order.",
                                {"order_id": ORDER_ID, "reason": {"type": "string", "enum": REFUND_REASONS}},
                                ["order_id", "reason"]),
    "track_shipment": _function("track_shipment", "Track a parcel by its tracking number.",
                                {"tracking_number": {"type": "string"},
                                 "carrier": {"type": "string", "enum": CARRIERS}},
                                ["tracking_number"]),
    "get_store_hours": _function("get_store_hours", "Opening hours of a store.",
                                 {"city": {"type": "string"}, "day": {"type": "string", "enum": DAYS}},
                                 ["city"]),
    "check_stock": _function("check_stock", "Check whether a product is in stock, in a size if given.",
                             {"product": {"type": "string"}, "size": {"type": "string"}}, ["product"]),
}

CITIES = ["Portland", "Denver", "Seattle", "Boise", "Salt Lake City", "Minneapolis", "Burlington", "Asheville",
          "Bend", "Missoula", "Flagstaff", "Anchorage"]
SHOES = ["trail running shoes", "hiking boots", "approach shoes", "camp sandals"]
APPAREL = ["down jacket", "rain shell", "fleece pullover", "merino base layer", "softshell pants", "insulated vest"]
GEAR = ["2-person tent", "sleeping bag", "trekking poles", "daypack", "headlamp", "camp stove", "water filter"]
SHOE_SIZES = ["8", "8.5", "9", "9.5", "10", "10.5", "11", "12", "42", "44"]
APPAREL_SIZES = ["XS", "S", "M", "L", "XL"]

GREETINGS = ["", "", "", "Hi, ", "Hello! ", "Hey there, ", "Good morning. ", "Hi there! "]

STATUS_ASKS = [
    "where is my order {order}?",
    "can you check the status of order {order}?",
    "what's happening with {order}? It's been a week.",
    "I placed order {order} last Tuesday and haven't heard anything. Any update?",
    "has {order} shipped yet?",
    "order number {order} - is it on its way?",
    "could you look up my order? The number is {order}.",
    "just checking on {order}, when will it get here?",
    "status of {order} please",
    "my order {order} still says processing, is something wrong?",
]
CANCEL_ASKS = [
    "please cancel order {order}.",
    "I need to cancel {order}.",
    "can you cancel my order {order}?",
    "I'd like to cancel order number {order}{why}.",
    "cancel {order} please{why}.",
    "is it too late to cancel {order}? I want to cancel it{why}.",
    "I want to call off order {order}{why}.",
]
CANCEL_WHY = {
    "changed_mind": [", I changed my mind", " because I changed my mind", ", I've decided I don't want it after all"],
    "found_cheaper": [", I found it cheaper somewhere else", " because I found a better price elsewhere"],
    "ordered_by_mistake": [", I ordered it by mistake", " - I placed it by accident", ", it was a duplicate order by mistake"],
}
REFUND_ASKS = [
    "I'd like a refund for order {order}, {why}.",
    "order {order}: {why}. I want my money back.",
    "can I get a refund on {order}? {Why}.",
    "{Why}, so please refund order {order}.",
    "I need to return {order} for a refund - {why}.",
    "refund request for {order}. {Why}.",
]
REFUND_WHY = {
    "damaged": ["the zipper arrived broken", "the tent poles came snapped in half", "the box was crushed and the stove is dented",
                "the jacket has a tear in the sleeve", "the headlamp arrived cracked"],
    "wrong_item": ["you sent me the wrong item", "I got a sleeping bag instead of the daypack I ordered",
                   "the boots in the box are not the ones I ordered", "I received someone else's order"],
    "not_as_described": ["the rain shell isn't waterproof like the listing said", "the color looks nothing like the photos",
                         "the pack is much smaller than described", "the listing said merino but it's polyester"],
    "late_delivery": ["it arrived two weeks late, after my trip", "it showed up way past the delivery date",
                      "the delivery was so late I had to buy one locally"],
    "no_longer_needed": ["I don't need it anymore", "my trip got cancelled so I won't use it",
                         "I no longer need the gear"],
}
TRACK_ASKS = [
    "can you track {tracking}?",
    "where is my package? Tracking number {tracking}.",
    "my tracking number is {tracking}{carrier_text}, where's the parcel now?",
    "track {tracking}{carrier_text} please",
    "what's the latest on shipment {tracking}{carrier_text}?",
    "the {carrier} tracking {tracking} hasn't updated in days, can you check?",
]
HOURS_ASKS = [
    "what are the hours of your {city} store{day_text}?",
    "when does the {city} shop open{day_text}?",
    "is the {city} store open{day_text}?",
    "what time does your store in {city} close{day_text}?",
    "{city} store hours{day_text}?",
    "I want to pick something up in {city}{day_text}, when are you open?",
]
STOCK_ASKS = [
    "do you have the {product} in stock{size_text}?",
    "{be} the {product}{size_text} available?",
    "any {product} left{size_text}?",
    "I'm looking for the {product}{size_text}. Do you have {it}?",
    "can you check stock on the {product}{size_text}?",
    "{be} the {product} back in stock{size_text}?",
]

NO_TOOL = [  # (user turn, assistant answer): questions the policy answers, chit-chat, missing details
    (["What is your return policy?", "How long do I have to return something?", "Can I still return an item I bought last month?",
      "how many days do I have to send something back?", "What's the return window?"],
     [("You can return unused items within 30 days of delivery for a full refund. Start a return from your order page, "
      "or give me the order number and I can start a refund for you.")]),
    (["Do you ship to Canada?", "Can you ship an order to Vancouver, Canada?", "Is international shipping available?",
      "do you deliver outside the US?"],
     [("Yes, we ship to Canada and most of Europe. International orders take 7 to 12 business days, and duties are "
      "paid on delivery.")]),
    (["How much is shipping?", "Is shipping free?", "What does standard shipping cost?", "how fast is express shipping?"],
     [("Standard shipping is free on orders over $75; below that it is $6.95. Express shipping is $14.95 and arrives "
      "in 2 business days.")]),
    (["Thanks, that's all I needed!", "Great, thank you so much.", "Perfect, thanks for the help.", "ok thanks",
      "Awesome, appreciate it!", "that's everything, thanks"],
     ["You're welcome! Enjoy your trip, and reach out any time.", "Happy to help. Have a great time outdoors!"]),
    (["I want to cancel my order.", "Can you cancel an order for me?", "Please cancel my last order.",
      "how do I cancel an order I just placed?"],
     ["I can help with that. What is the order number? It starts with NW- and is in your confirmation email."]),
    (["Where is my order?", "Can you check my order status?", "My order hasn't arrived yet.",
      "it's been ten days and my package still isn't here"],
     ["I can look that up. What is your order number? You will find it in your confirmation email, starting with NW-."]),
    (["I'd like a refund.", "How do I get my money back for a broken item?", "something I bought arrived damaged"],
     ["Sorry to hear that. Please give me your order number and tell me what went wrong, and I will start the refund."]),
    (["Do you price match?", "Will you match a lower price from another shop?"],
     ["Yes, we match the price of an identical item sold new by an authorised retailer, within 14 days of your purchase."]),
    (["Can you recommend a good hiking trail near Denver?", "What's the weather like in Seattle this weekend?",
      "can you book me a campsite in Moab?", "what's a good stretching routine before a long hike?"],
     [("I can only help with orders, returns, stock and our stores, so I can't answer that one. Is there anything about "
      "an order I can check for you?")]),
    (["Do you offer gift cards?", "Can I buy a gift card online?"],
     ["Yes, digital gift cards from $25 to $500 are on our website and arrive by email within minutes."]),
    (["How do I change my delivery address?", "I entered the wrong address, can it be changed?"],
     [("If the order has not shipped, reply with the order number and the new address and we will update it. Once it "
      "has shipped, the carrier's tracking page lets you redirect the parcel.")]),
]


def call_id(rng: random.Random) -> str:
    return "call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24))


def order_id(rng: random.Random) -> str:
    return f"NW-{rng.randint(100000, 999999)}"


def tracking(rng: random.Random) -> tuple[str, str]:
    carrier = rng.choice(CARRIERS)
    if carrier == "UPS":
        number = "1Z" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=6)) + "".join(rng.choices(string.digits, k=10))
    elif carrier == "FedEx":
        number = "".join(rng.choices(string.digits, k=12))
    else:
        number = "".join(rng.choices(string.digits, k=10))
    return number, carrier


def user_text(rng: random.Random, template: str, greet: bool = True, **slots) -> str:
    text = template.format(**slots)
    greeting = rng.choice(GREETINGS) if greet else ""
    if greet and not greeting.endswith(", "):  # a sentence of its own starts with a capital
        text = text[0].upper() + text[1:]
    return greeting + text


def when(rng: random.Random) -> date:
    return date(2025, 3, 1) + timedelta(days=rng.randint(0, 60))


def spoken(d: date) -> str:
    return f"{d:%A}, {d:%B} {d.day}"


def request(rng: random.Random, tool: str, greet: bool = True) -> tuple[str, dict, dict, str]:
    """(user text, call arguments, the tool's result, the assistant's answer from it) for one tool;
    `greet=False` leaves out the greeting (the second question of a message)."""
    if tool == "get_order_status":
        order = order_id(rng)
        status = rng.choice(["processing", "shipped", "out_for_delivery", "delivered"])
        day = when(rng)
        result = {"order_id": order, "status": status, "estimated_delivery" if status != "delivered" else "delivered_on": day.isoformat()}
        answer = {
            "processing": f"Order {order} is still being packed. It should ship soon and arrive by {spoken(day)}.",
            "shipped": f"Order {order} has shipped and should arrive by {spoken(day)}.",
            "out_for_delivery": f"Good news: order {order} is out for delivery and should reach you today, {spoken(day)}.",
            "delivered": f"Order {order} was delivered on {spoken(day)}. If you can't find it, let me know and I'll help.",
        }[status]
        return user_text(rng, rng.choice(STATUS_ASKS), greet, order=order), {"order_id": order}, result, answer
    if tool == "cancel_order":
        order = order_id(rng)
        template = rng.choice(CANCEL_ASKS)
        reason = rng.choice(CANCEL_REASONS) if "{why}" in template and rng.random() < 0.6 else None
        why = rng.choice(CANCEL_WHY[reason]) if reason else ""
        args = {"order_id": order} | ({"reason": reason} if reason else {})
        if rng.random() < 0.75:
            amount = round(rng.uniform(19, 420), 2)
            result = {"order_id": order, "cancelled": True, "refund_amount": amount}
            answer = f"Done: order {order} is cancelled, and ${amount:.2f} will be back on your card within 5 business days."
        else:
            result = {"order_id": order, "cancelled": False, "reason": "already_shipped"}
            answer = (f"Order {order} has already shipped, so it can't be cancelled now. Once it arrives you can return "
                      "it within 30 days for a refund.")
        return user_text(rng, template, greet, order=order, why=why), args, result, answer
    if tool == "request_refund":
        order = order_id(rng)
        reason = rng.choice(REFUND_REASONS)
        why = rng.choice(REFUND_WHY[reason])
        amount = round(rng.uniform(15, 380), 2)
        refund = f"RF-{rng.randint(10000, 99999)}"
        result = {"refund_id": refund, "order_id": order, "amount": amount, "status": "approved", "days_to_process": 5}
        answer = f"Your refund {refund} for ${amount:.2f} is approved and will reach your card within 5 business days."
        text = user_text(rng, rng.choice(REFUND_ASKS), greet, order=order, why=why, Why=why[0].upper() + why[1:])
        return text, {"order_id": order, "reason": reason}, result, answer
    if tool == "track_shipment":
        number, carrier = tracking(rng)
        template = rng.choice(TRACK_ASKS)
        named = "{carrier}" in template or ("{carrier_text}" in template and rng.random() < 0.5)
        carrier_text = f" ({carrier})" if named and "{carrier}" not in template else ""
        args = {"tracking_number": number} | ({"carrier": carrier} if named else {})
        place = rng.choice(["Salt Lake City, UT", "Memphis, TN", "Louisville, KY", "Reno, NV", "Columbus, OH"])
        day = when(rng)
        result = {"tracking_number": number, "carrier": carrier, "status": "in_transit", "last_scan": place,
                  "expected_delivery": day.isoformat()}
        answer = f"Your {carrier} parcel was last scanned in {place} and is expected on {spoken(day)}."
        return user_text(rng, template, greet, tracking=number, carrier=carrier, carrier_text=carrier_text), args, result, answer
    if tool == "get_store_hours":
        city = rng.choice(CITIES)
        day = rng.choice(DAYS) if rng.random() < 0.5 else None
        day_text = rng.choice([f" on {day.title()}", f" this {day.title()}"]) if day else ""
        args = {"city": city} | ({"day": day} if day else {})
        opens, closes = ("10:00", "17:00") if day == "sunday" else ("09:00", rng.choice(["19:00", "20:00"]))
        result = {"city": city, "day": day or "today", "open": opens, "close": closes}
        answer = (f"Our {city} store is open from {int(opens[:2])} am to {int(closes[:2]) - 12} pm"
                  + (f" on {day.title()}." if day else " today."))
        return user_text(rng, rng.choice(HOURS_ASKS), greet, city=city, day_text=day_text), args, result, answer
    kind = rng.choice(["shoes", "apparel", "gear"])
    product = rng.choice({"shoes": SHOES, "apparel": APPAREL, "gear": GEAR}[kind])
    size = None if kind == "gear" or rng.random() < 0.3 else rng.choice(SHOE_SIZES if kind == "shoes" else APPAREL_SIZES)
    size_text = f" in size {size}" if size else ""
    args = {"product": product} | ({"size": size} if size else {})
    plural = product.endswith("s")  # boots, shoes, poles: "are", "them"
    be = "are" if plural else "is"
    if rng.random() < 0.7:
        count = rng.randint(1, 14)
        result = {"product": product, "size": size, "in_stock": True, "quantity": count}
        answer = f"Yes, the {product}{size_text} {be} in stock: {count} left online."
    else:
        day = when(rng)
        result = {"product": product, "size": size, "in_stock": False, "restock_date": day.isoformat()}
        answer = f"The {product}{size_text} {be} sold out right now; we expect more on {spoken(day)}."
    text = user_text(rng, rng.choice(STOCK_ASKS), greet, product=product, size_text=size_text, be=be,
                     it="them" if plural else "it")
    return text, args, result, answer


def offered(rng: random.Random, needed: list[str]) -> list[dict]:
    """The tools a row offers: those it needs, and others up to TOOLS_PER_ROW, shuffled."""
    others = rng.sample([t for t in TOOLS if t not in needed], TOOLS_PER_ROW - len(set(needed)))
    names = list(dict.fromkeys(needed)) + others
    rng.shuffle(names)
    return [TOOLS[n] for n in names]


def tool_call(rng: random.Random, name: str, args: dict) -> dict:
    return {"id": call_id(rng), "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def row(rng: random.Random, kind: str) -> dict:
    system = {"role": "system", "content": SYSTEM}
    if kind == "no_tool":
        questions, answers = rng.choice(NO_TOOL)
        i = rng.randrange(len(questions))  # one answer per question: the same prompt never gets two
        question = rng.choice(["", "", "Hi! ", "Hello. ", "Hey there! "]) + questions[i][0].upper() + questions[i][1:]
        return {"messages": [system, {"role": "user", "content": question},
                             {"role": "assistant", "content": answers[i % len(answers)]}],
                "tools": offered(rng, [])}
    if kind == "parallel":
        if rng.random() < 0.5:  # two orders at once
            (_, a1, _, _), (_, a2, _, _) = request(rng, "get_order_status"), request(rng, "get_order_status")
            text = rng.choice(["Can you check on orders {a} and {b}?", "Where are {a} and {b}?",
                               "Status of my two orders please: {a} and {b}."]).format(a=a1["order_id"], b=a2["order_id"])
            calls, needed = [("get_order_status", a1), ("get_order_status", a2)], ["get_order_status"]
        else:  # two different questions
            first, second = rng.sample(["get_order_status", "get_store_hours", "check_stock", "track_shipment"], 2)
            (t1, a1, _, _), (t2, a2, _, _) = request(rng, first), request(rng, second, greet=False)
            text = f"{t1} Also, {t2}"
            calls, needed = [(first, a1), (second, a2)], [first, second]
        return {"messages": [system, {"role": "user", "content": text},
                             {"role": "assistant", "tool_calls": [tool_call(rng, n, a) for n, a in calls]}],
                "tools": offered(rng, needed)}
    tool = rng.choice(list(TOOLS))
    text, args, result, answer = request(rng, tool)
    call = tool_call(rng, tool, args)
    messages = [system, {"role": "user", "content": text}, {"role": "assistant", "tool_calls": [call]}]
    if kind == "answered":
        messages += [{"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)},
                     {"role": "assistant", "content": answer}]
    return {"messages": messages, "tools": offered(rng, [tool])}


def make_rows(n: int, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    counts = {kind: round(n * share) for kind, share in SHARES.items()}
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    kinds += ["no_tool"] * (n - len(kinds))
    rng.shuffle(kinds)  # interleaved, so any slice (and the held-out test split) mixes the kinds
    rows, seen = [], set()
    for kind in kinds:
        while (made := row(rng, kind))["messages"][1]["content"] in seen:
            pass  # a request asked twice would let a test row repeat a training row
        seen.add(made["messages"][1]["content"])
        rows.append(made)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = make_rows(args.rows)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
