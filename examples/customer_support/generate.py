"""Generate the customer-support router's train/eval data, deterministically (see README.md).

    .venv/bin/python examples/customer_support/generate.py [--out DIR] [--seed N] [--train N] [--eval N]

Each row is a phrasing template for one intent, dressed up with an order id, greetings, sign-offs,
context sentences with distracting names/dates/amounts, typos, case and punctuation noise. The
label is fixed by the intent alone, so noise can never change what the right call is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolroute.grammars import (
    Catalogue,
    NoTool,
    ToolCall,
    load_catalogue,
    parse_tool_call,
    render_system_prompt,
    serialize_call,
    serialize_no_tool,
)
from toolroute.runtime.files import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))  # followups.py, beside this file

HERE = Path(__file__).resolve().parent
TOOLS_FILE = HERE / "tools.py"
DEFAULT_SEED = 20240611
DEFAULT_TRAIN = 480
DEFAULT_EVAL = 180
# Share of eval rows drawn from templates that train never sees: tests paraphrase generalisation.
HELD_OUT_SHARE = 0.25
# A private-use character stands in for the order id while noise is applied, so typos and case
# changes can never touch the id: the label must be the id exactly as it appears in the text.
ID_MARK = "\ue000"

# --------------------------------------------------------------------------------------------
# Intents. The label depends only on the intent; templates say the same thing many ways.
# `{order}` becomes a phrase naming the order ("my order ORD-1234", "order number 44871",
# "#88231"), `{oid}` the bare id where the template already names it as an order.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intent:
    key: str
    weight: int  # rows per 480; scaled to the requested size
    templates: tuple[str, ...]
    held_out: tuple[str, ...]  # used for eval only
    tool: str | None = None  # None: no_tool with `reason`
    fixed: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    style: str = "full"  # full | light | bare: how much decoration the request may get
    # escalate only: chance of naming an order when the template does not, and of urgency cues
    attach_order: float = 0.0
    p_high: float = 0.0
    p_low: float = 0.0


TRACK = (
    "Where is {order}?",
    "Can you tell me where {order} is?",
    "Track {order}",
    "tracking for {order} please",
    "What's the status of {order}?",
    "Has {order} shipped yet?",
    "When will {order} arrive?",
    "Any update on {order}? It's been a week.",
    "I'm still waiting for {order}. Where is it?",
    "{order} - where is it now?",
    "Could you check on {order} for me?",
    "I'd like to know when {order} will be delivered.",
    "Is {order} out for delivery today?",
    "The tracking page for {order} hasn't updated in days, can you check where it is?",
    "order status {oid}",
    "Where's my stuff? Order number {oid}",
    "wheres {order} at",
    "Did {order} leave the warehouse yet?",
    "{oid} status?",
    "What's the expected delivery date for {order}?",
    "Can you look up {order} and tell me when it's coming?",
    "I need {order} by Friday for a birthday, is it going to make it?",
    "Please track my package, the order number is {oid}.",
    "The app says {order} has been 'in transit' since Monday. Where exactly is it?",
    "just checking on {order}",
    "Is there an ETA for {order}?",
    "Has {order} been dispatched?",
    "My parcel hasn't arrived yet. Order: {oid}. Can you check?",
    "What's happening with {order}?",
    "I ordered 3 candles {when}, order {oid}. Where are they?",
    "My order number is {oid} and I paid {amount}. When will it come?",
    "Can I get a delivery update for {order}",
)
TRACK_HELD = (
    "Quick q: which courier has {order} and what's the ETA?",
    "Could you find out how far along {order} is?",
    "Is {order} still on schedule?",
    "Been refreshing the tracking page all day for {order}, any news?",
    "Need a location update on {order}.",
    "Has anyone actually shipped {order} or is it still sitting in a warehouse?",
    "Where in the world is {order}?",
    "Order {oid}: when can I expect it at my door?",
)

REFUND = (
    "I want a refund for {order}.",
    "Please refund {order}.",
    "Can I get my money back for {order}?",
    "refund {order}",
    "I'd like to return {order} and get a refund.",
    "How do I get a refund on {order}?",
    "Start a refund for {order} please.",
    "I need to request a refund, order number {oid}.",
    "Requesting a full refund on {order}.",
    "Money back for {order}, please.",
    "Can you process a refund for {order}?",
    "I'm returning {order}. Please issue the refund to my card.",
    "{order}: refund please",
    "I want to send {order} back for a refund.",
    "Order {oid}. I would like a refund.",
    "I'd like a refund on the {amount} I paid for {order}.",
)
REFUND_HELD = (
    "Could you reverse the charge for {order}?",
    "I'd like to be reimbursed for {order}.",
    "Put the money for {order} back on my card please.",
    "I'd like my money returned for {order}.",
)

DAMAGED = (
    "{order} arrived broken, I want a refund.",
    "The vase in {order} was cracked when I opened it. Refund please.",
    "Refund {order}, it came damaged.",
    "The screen on the tablet from {order} is shattered. I want my money back.",
    "The box for {order} was crushed and the item inside is broken. Please refund.",
    "{order} showed up smashed to pieces. I'd like a refund.",
    "The bottle in {order} was leaking everywhere, refund it please.",
    "I got {order} today and it's badly dented. Can I get a refund?",
    "Refund for {order}, the jacket was torn when it arrived.",
    "Order number: {oid}. I want a refund, the lid is cracked.",
    "My lamp from {order} arrived damaged, can you refund me?",
)
DAMAGED_HELD = (
    "Half the plates in {order} were in pieces when the box arrived, so I'd like my money back.",
    "The parcel for {order} was soaked through and the contents ruined. Please refund me.",
    "{order} is unusable, the casing arrived split down the middle. Refund.",
)

WRONG_ITEM = (
    "I received the wrong item in {order}. I want a refund.",
    "{order} is the wrong size, please refund.",
    "I ordered blue but {order} came in red. Refund please.",
    "You sent me someone else's parcel instead of {order}. I want my money back.",
    "Wrong colour on {order}, I'd like a refund.",
    "Refund {order}, this isn't what I ordered.",
    "The shoes in {order} are a size 9, I ordered a 7. Money back please.",
    "{order} contained a phone case for the wrong model. Refund it.",
    "Can I get a refund for {order}? You sent the wrong product.",
    "Wrong item in order {oid}, refund please.",
)
WRONG_ITEM_HELD = (
    "Opened {order} and found a toaster instead of the kettle I paid for, refund please.",
    "Whatever was packed in {order} is not my product. I need a refund.",
)

NOT_DELIVERED = (
    "{order} never arrived. I want a refund.",
    "I never received {order}, please refund me.",
    "Tracking says {order} was delivered but it's not here. I want my money back.",
    "Refund {order}, it never showed up.",
    "It's been a month and {order} still hasn't arrived, just refund it.",
    "{order} got lost in the post. Refund please.",
    "Nothing ever came for {order}. Can I get a refund?",
    "Order {oid} was never delivered, I'd like a refund.",
    "My parcel for {order} never turned up. Money back please.",
)
NOT_DELIVERED_HELD = (
    "The courier claims they dropped off {order} but nobody here got anything, please refund.",
    "Still no sign of {order} after six weeks, so I'd like my money returned.",
)

CHANGED_MIND = (
    "I changed my mind about {order}, can I get a refund?",
    "I don't want {order} anymore. Refund please.",
    "I don't need {order} anymore, please refund it.",
    "{order}: no longer needed, refund please.",
    "I've decided I don't want {order} after all. Can you refund it?",
    "Changed my mind on {order}. Money back please.",
    "I don't want the dress from {order} any more, please give me a refund.",
)
CHANGED_MIND_HELD = (
    "On second thought I'd rather not keep {order}, refund please.",
    "Having second thoughts about {order}, I'd like a refund.",
)

OTHER_REFUND = (
    "I was charged twice for {order}, please refund the extra payment.",
    "{order} arrived too late for the wedding, so I want a refund.",
    "The quality of {order} is much worse than the photos. Refund please.",
    "Refund {order} please, it doesn't work with my model of printer.",
    "I want my money back for {order}, the fabric gives me a rash.",
)
OTHER_REFUND_HELD = ("{order} turned up a week after the party it was for. I'd like my money back.",)

COMPLAINT = (
    "I want to make a formal complaint.",
    "I'd like to file a complaint about your customer service.",
    "Your delivery driver was really rude to me when he dropped off {order}.",
    "This is the third time {order} has been delayed. Absolutely unacceptable.",
    "I'm very unhappy with the way I was treated on the phone {when}.",
    "Worst service I've ever had. I want this logged as a complaint.",
    "I'm writing to complain about the packaging on {order}, it was wrapped in so much plastic.",
    "Nobody has answered my emails for two weeks. This is a disgrace.",
    "I have a complaint about one of your staff in the Leeds store.",
    "Your courier threw {order} over my fence. I'm not happy about it.",
    "I am extremely disappointed with how {order} was handled from start to finish.",
    "Complaint: I was promised a callback {when} and nobody called.",
    "The way your team handled {order} is frankly shocking and I want it on record.",
    "I keep getting passed around between departments and I'm fed up.",
)
COMPLAINT_HELD = (
    "Consider this my official grievance about the service I received.",
    "I'm appalled that {order} was left out in the open on the street.",
    "Your support team has been dismissive every single time I've contacted them.",
)

HUMAN = (
    "Can I speak to a real person?",
    "I want to talk to a human.",
    "agent",
    "Put me through to a manager, please.",
    "Is there a human I can chat to about {order}?",
    "Transfer me to a customer service representative.",
    "I don't want a bot. Get me a person.",
    "Can someone from your team call me back?",
    "I'd rather speak with a live agent about {order}.",
    "Human please.",
    "Let me talk to your supervisor.",
    "Connect me with an actual employee please.",
    "I need to talk to someone about {order}, not a chatbot.",
    "Been waiting ages on {order}. Just put me through to a real person.",
    "representative",
)
HUMAN_HELD = (
    "Is it possible to get a staff member on the line?",
    "Hand me over to one of your colleagues, a human one.",
    "I'd prefer a real member of the support team for {order}.",
    "Operator!",
)

LEGAL = (
    "I'm going to sue you over {order}.",
    "My lawyer will be in touch about {order}.",
    "I'm considering legal action against your company.",
    "This breaks consumer protection law and I'm reporting you to trading standards.",
    "Please forward this to your legal department.",
    "I'm taking you to small claims court.",
    "This is a formal GDPR subject access request for all the data you hold on me.",
    "The heater from {order} caught fire and I've contacted a solicitor.",
    "I've spoken to an attorney about {order} and will be filing a claim.",
    "I want all my personal data deleted under GDPR.",
    "Expect to hear from my legal team.",
    "I'll see you in court.",
)
LEGAL_HELD = (
    "I've instructed counsel regarding {order}.",
    "This will be going to the ombudsman and a lawyer if it isn't resolved.",
    "Under data protection law you must tell me what information you've stored about me.",
)

SECURITY = (
    "I think my account has been hacked.",
    "Someone changed my password and email and now I can't log in.",
    "There's an order on my account I never placed: {order}.",
    "I got a login alert from a country I've never been to.",
    "My card was used on your site without my permission. {order} isn't mine.",
    "Fraudulent charge on my account for {order}!",
    "I clicked a phishing link that looked like your site and typed in my password.",
    "Please lock my account, somebody else is using it.",
    "My saved card details were used by someone else.",
    "Someone is logged into my account and changing my address.",
    "I didn't make {order}, I think someone stole my login.",
    "I'm getting password reset emails I didn't request.",
)
SECURITY_HELD = (
    "Unknown device signed in to my profile and placed {order}.",
    "Somebody got hold of my credentials and is buying things with my stored card.",
    "My account's email address was swapped to one I don't recognise.",
)

# No tool fits these, so staff must act; none of them asks for a person (that is human_requested).
OTHER_ESCALATION = (
    "I need to change the delivery address on {order}, it's going to my old flat.",
    "Please cancel {order} before it ships.",
    "Can you add a gift message to {order}?",
    "The invoice for {order} has the wrong company name on it and needs reissuing.",
    "We'd like to place a bulk order of 300 mugs for our office, can that be arranged?",
    "I'm a journalist and would like a comment from your press office.",
    "Your checkout page keeps crashing when I try to pay.",
    "I need the delivery for {order} brought up to the third floor, I use a wheelchair.",
    "Can you combine {order} with my other order into one shipment?",
    "I'd like to become a supplier for your shop.",
    "Please split the payment for {order} across two cards.",
    "The discount code in your newsletter doesn't work at checkout.",
)
OTHER_ESCALATION_HELD = (
    "Could the delivery of {order} be moved to next week while I'm away?",
    "I'd like to set up a corporate account for my company's purchases.",
    "The promo banner says 20% off but my basket shows full price.",
)

GREETING = (
    "Hi",
    "Hello!",
    "hey there",
    "Good morning",
    "Good evening :)",
    "Thanks!",
    "thank you so much",
    "Thanks, that's all I needed.",
    "Bye",
    "cheers",
    "How are you today?",
    "ok thanks",
    "Great, thanks for your help!",
    "Hi, anyone there?",
    "hello hello",
    "Have a nice day!",
    "You've been very helpful.",
    "yo",
    "Morning!",
    "Thanks a lot, have a good one.",
    "Hi, I'm {first}.",
    "Thanks {first}, bye!",
    "Hey, how's it going?",
    "Perfect, thank you.",
    "That's great news, thanks!",
    "Hello, nice to meet you.",
    "ok bye",
    "Good night!",
    "Thank you for sorting that out.",
    "Hi again!",
)
GREETING_HELD = (
    "Appreciate the help, take care.",
    "Hiya!",
    "Good afternoon to you",
    "Much obliged!",
    "Nice chatting with you, bye.",
    "Howdy",
)

INFORMATION = (
    "What's your refund policy?",
    "Do you ship to Canada?",
    "What are your opening hours?",
    "Which payment methods do you accept?",
    "How long do I have to return something?",
    "Do you offer free shipping?",
    "How much is shipping to Australia?",
    "Can I pay with PayPal?",
    "Do you have a physical store in Berlin?",
    "How long does standard delivery take?",
    "Do you offer gift wrapping?",
    "Can I change my delivery address after I've ordered?",
    "How do I reset my password?",
    "Is there a student discount?",
    "Do you price match?",
    "What's your customer service phone number?",
    "Are your products covered by a warranty?",
    "Do you deliver on weekends?",
    "Can I cancel an order after placing it?",
    "What currency are your prices in?",
    "Do you ship internationally?",
    "Is express delivery available?",
    "Where are you based?",
    "How do refunds work?",
    "Do I need an account to order?",
    "Do you accept Apple Pay?",
    "Are returns free?",
    "What time does your support line open?",
    "Can I return an item I bought in one of your stores?",
    "How do I track an order?",
)
INFORMATION_HELD = (
    "Is Klarna an option at checkout?",
    "What's the cut-off time for next-day delivery?",
    "Do you sell gift cards?",
    "Can you send stuff to the UK?",
    "How many days until a refund shows up on my card?",
    "Are you open on bank holidays?",
    "Is there a loyalty programme?",
    "Does the warranty cover accidental damage?",
)

# Track or refund requests with no order id: the router must ask, not guess. Numbers here are
# dates, amounts and quantities, never order ids.
MISSING_ID = (
    "I want a refund.",
    "Where is my package?",
    "Can you track my order?",
    "refund please",
    "Where's my order??",
    "My parcel hasn't arrived yet, can you check?",
    "I need my money back, the headphones arrived broken.",
    "Please refund my last order.",
    "When will my stuff arrive?",
    "The jacket I ordered is the wrong size. Refund please.",
    "I ordered 2 lamps on {date} for {amount} and they still aren't here. Where are they?",
    "Track my delivery",
    "Has my order shipped yet?",
    "I never got my package, I want a refund.",
    "Can I get a refund on the shoes I bought {when}?",
    "what's the status of my order",
    "I want to return my order and get my money back.",
    "My order from {date} still hasn't shown up.",
    "Refund the {amount} you charged me for the blender, it's cracked.",
    "Can you tell me when my delivery is coming?",
    "I changed my mind about my purchase, refund please.",
    "I'd like to check on my order status.",
    "hi, my order didn't come",
    "I can't find my order number but my parcel is late, where is it?",
    "The shoes I bought {when} are a size 9 and I ordered a 7. Refund please.",
)
MISSING_ID_HELD = (
    "Could you see how my shipment is doing?",
    "The mug I bought came chipped so I'd like a refund.",
    "Any news on my delivery? It was supposed to come on {date}.",
    "I paid {amount} for a blender I don't want any more, money back please.",
    "Is my parcel with the courier yet?",
    "I'd like a refund for the order I placed on {date}.",
)

OUT_OF_SCOPE = (
    "What's the weather like tomorrow?",
    "Tell me a joke.",
    "Can you book me a flight to Rome?",
    "What's the capital of Australia?",
    "Write me a poem about cats.",
    "Can you help me with my maths homework?",
    "Who won the football last night?",
    "Recommend a good movie.",
    "How do I fix my car's check engine light?",
    "What's 17 times 23?",
    "Translate 'good morning' into Spanish.",
    "Can you order me a pizza?",
    "What's the meaning of life?",
    "My wifi keeps dropping, how do I fix my router?",
    "Is it going to rain in London this weekend?",
    "Give me a recipe for banana bread.",
    "Can you set an alarm for 7am?",
    "What time is it in Tokyo?",
    "Do you think I should buy bitcoin?",
    "Who wrote Pride and Prejudice?",
    "Can you do my taxes?",
)
OUT_OF_SCOPE_HELD = (
    "Can you summarise this article for me?",
    "Who's the best footballer ever?",
    "Help me write a cover letter.",
    "How tall is the Eiffel Tower?",
    "Play some music.",
    "Any tips for growing tomatoes?",
)

INTENTS: tuple[Intent, ...] = (
    Intent("track_order", 140, TRACK, TRACK_HELD, tool="track_order"),
    Intent("refund.unstated", 45, REFUND, REFUND_HELD, tool="request_refund"),
    Intent("refund.damaged", 28, DAMAGED, DAMAGED_HELD, "request_refund", {"reason": "damaged"}),
    Intent("refund.wrong_item", 25, WRONG_ITEM, WRONG_ITEM_HELD, "request_refund", {"reason": "wrong_item"}),
    Intent(
        "refund.not_delivered",
        22,
        NOT_DELIVERED,
        NOT_DELIVERED_HELD,
        "request_refund",
        {"reason": "not_delivered"},
    ),
    Intent(
        "refund.changed_mind",
        18,
        CHANGED_MIND,
        CHANGED_MIND_HELD,
        "request_refund",
        {"reason": "changed_mind"},
    ),
    Intent("refund.other", 12, OTHER_REFUND, OTHER_REFUND_HELD, "request_refund", {"reason": "other"}),
    Intent(
        "escalate.complaint",
        30,
        COMPLAINT,
        COMPLAINT_HELD,
        "escalate",
        {"topic": "complaint"},
        attach_order=0.3,
        p_high=0.2,
        p_low=0.15,
    ),
    Intent(
        "escalate.human_requested",
        28,
        HUMAN,
        HUMAN_HELD,
        "escalate",
        {"topic": "human_requested"},
        attach_order=0.25,
        p_high=0.3,
        p_low=0.1,
    ),
    Intent(
        "escalate.legal",
        18,
        LEGAL,
        LEGAL_HELD,
        "escalate",
        {"topic": "legal"},
        attach_order=0.3,
        p_high=0.3,
        p_low=0.1,
    ),
    Intent(
        "escalate.account_security",
        24,
        SECURITY,
        SECURITY_HELD,
        "escalate",
        {"topic": "account_security"},
        attach_order=0.1,
        p_high=0.45,
    ),
    Intent(
        "escalate.other",
        18,
        OTHER_ESCALATION,
        OTHER_ESCALATION_HELD,
        "escalate",
        {"topic": "other"},
        attach_order=0.3,
        p_high=0.2,
        p_low=0.25,
    ),
    Intent("no_tool.greeting", 15, GREETING, GREETING_HELD, reason="greeting", style="bare"),
    Intent("no_tool.information", 22, INFORMATION, INFORMATION_HELD, reason="information request"),
    Intent("no_tool.missing_id", 21, MISSING_ID, MISSING_ID_HELD, reason="missing order id"),
    Intent("no_tool.out_of_scope", 14, OUT_OF_SCOPE, OUT_OF_SCOPE_HELD, reason="out of scope", style="light"),
)

# --------------------------------------------------------------------------------------------
# Decoration: label-neutral pieces. None may carry an urgency cue or a refund reason (checked).
# --------------------------------------------------------------------------------------------

PREFIXES = (
    "Hi,",
    "Hello,",
    "Hi there!",
    "Hey,",
    "Hey there,",
    "Good morning,",
    "Good afternoon.",
    "Hello team,",
    "Hi, this is {name}.",
    "Dear customer service,",
    "Hi support,",
    "Ok so",
    "Hello, {first} here.",
    "Um, hi.",
)
SUFFIXES = (
    "Thanks!",
    "Thank you.",
    "thx",
    "Cheers, {first}",
    "Thanks in advance.",
    "Appreciate it.",
    "- {name}",
    "Kind regards, {name}",
    "Many thanks.",
    "ty",
    "🙏",
    ":)",
)
CONTEXTS = (
    "I placed the order on {date}.",
    "I paid {amount} by card.",
    "It was a gift for my {relative}.",
    "I've been shopping with you for {years} years.",
    "My name is {name}.",
    "I ordered it {when}.",
    "Sorry, writing from my phone.",
    "I checked the app first.",
    "You can reach me on {phone}.",
    "The total was {amount}.",
)
ORDER_CLAUSES = (
    "It's about {order}.",
    "This is regarding {order}.",
    "Re: {order}",
    "Order: {oid}",
    "It concerns {order}.",
    "({order})",
)
HIGH_PREFIXES = ("URGENT:", "Urgent!", "This is urgent.", "ASAP please.")
HIGH_SUFFIXES = (
    "This is urgent.",
    "Please deal with this ASAP.",
    "I need this handled immediately.",
    "It's an emergency.",
    "asap pls",
    "Time-sensitive, please hurry.",
    "Urgent, please.",
)
LOW_SUFFIXES = (
    "No rush.",
    "Not urgent, whenever you get a chance.",
    "No hurry on this.",
    "Whenever someone has a moment is fine.",
    "It's not urgent.",
    "Low priority, no rush at all.",
)

URGENCY_CUE = re.compile(
    r"\b(urgent\w*|asap|immediately|right (now|away)|emergency|hurry|rush|whenever|time-sensitive"
    r"|priority)\b",
    re.IGNORECASE,
)
REASON_CUE = re.compile(
    r"\b(broke\w*|crack\w*|damage\w*|smash\w*|shatter\w*|dent\w*|torn|leak\w*|wrong|size|colou?r|never"
    r"|arriv\w*|lost|mind|anymore|no longer|twice|late|quality|work)\b",
    re.IGNORECASE,
)

FIRST_NAMES = (
    "Maria",
    "Tom",
    "Priya",
    "Kenji",
    "Aisha",
    "Lukas",
    "Sofia",
    "Daniel",
    "Chloé",
    "Oluwaseun",
    "Mateo",
    "Hannah",
    "Wei",
    "Fatima",
    "Jonas",
    "Emily",
    "Sam",
    "Zoë",
)
LAST_NAMES = (
    "Becker",
    "Shah",
    "Nakamura",
    "Okafor",
    "García",
    "Novak",
    "Smith",
    "O'Brien",
    "Johansson",
    "Kowalski",
    "Nguyen",
    "Dubois",
)
DATES = ("March 3", "3 March", "the 14th", "12/03", "June 21st", "Monday", "Sept 9", "2/11/2024", "May 30")
WHENS = (
    "last Tuesday",
    "two weeks ago",
    "yesterday",
    "on Black Friday",
    "about 10 days ago",
    "last month",
    "3 weeks ago",
)
AMOUNTS = ("$49.99", "£120", "€35.50", "89 dollars", "$1,299", "£12.40", "€250", "$18")
RELATIVES = ("mum", "dad", "sister", "brother", "wife", "husband", "son", "daughter", "best friend", "nan")
YEARS = ("2", "3", "5", "ten", "six", "12")
PHONES = ("07700 900123", "+44 20 7946 0958", "(555) 010-4477", "0151 496 0321", "555-0143")

# Misspellings customers really make; keyed by the lowercase word.
TYPOS: Mapping[str, tuple[str, ...]] = {
    "refund": ("refnd", "refun", "reufnd"),
    "where": ("were", "wher"),
    "where's": ("wheres", "were's"),
    "order": ("oder", "ordr", "orer"),
    "package": ("pakage", "packge"),
    "parcel": ("parcle", "parcell"),
    "received": ("recieved", "recived"),
    "please": ("pls", "plz", "pleas"),
    "you": ("u",),
    "your": ("ur", "yuor"),
    "arrived": ("arived", "arrivd"),
    "arrive": ("arive",),
    "damaged": ("damadged", "damged"),
    "broken": ("borken", "brokn"),
    "wrong": ("wrnog", "wromg"),
    "delivered": ("deliverd", "delievered"),
    "delivery": ("delivry", "delivey"),
    "tracking": ("trackign", "traking"),
    "track": ("trak", "trac"),
    "account": ("acount", "accout"),
    "password": ("pasword", "passwrod"),
    "someone": ("somone",),
    "the": ("teh",),
    "what's": ("whats", "wats"),
    "want": ("wnat", "wan"),
    "money": ("mony", "moeny"),
    "still": ("stil",),
    "hasn't": ("hasnt",),
    "don't": ("dont",),
    "can't": ("cant",),
    "i'm": ("im",),
    "it's": ("its",),
    "manager": ("manger",),
    "speak": ("speek",),
    "human": ("humna",),
    "complaint": ("complant", "compliant"),
    "lawyer": ("lawer",),
    "thanks": ("thx", "thnaks"),
    "shipped": ("shiped",),
    "status": ("staus", "statu"),
    "cancel": ("cancle",),
    "because": ("becuase",),
    "would": ("woud",),
    "know": ("kno",),
    "anymore": ("anymor",),
    "replacement": ("replacment",),
    "shipping": ("shiping",),
    "weather": ("wether",),
}

# Order ids: (weight, kind). Formats vary as real shops' do.
ID_KINDS: tuple[tuple[int, str], ...] = (
    (30, "ord-hyphen"),
    (6, "ord-plain"),
    (5, "ord-year"),
    (14, "hash"),
    (12, "letter-digit"),
    (10, "grouped"),
    (16, "digits"),
)


# --------------------------------------------------------------------------------------------
# Order ids
# --------------------------------------------------------------------------------------------


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def _random_id(rng: random.Random) -> str:
    kind = rng.choices([k for _, k in ID_KINDS], weights=[w for w, _ in ID_KINDS])[0]
    if kind in ("ord-hyphen", "ord-plain", "ord-year"):
        prefix = rng.choices(("ORD", "ord", "Ord"), weights=(7, 2, 1))[0]
        if kind == "ord-hyphen":
            return f"{prefix}-{_digits(rng, rng.choice((4, 5, 5, 6)))}"
        if kind == "ord-plain":
            return f"{prefix}{_digits(rng, rng.choice((5, 6)))}"
        return f"{prefix}-{rng.randint(2021, 2025)}-{rng.randint(0, 99999):05d}"
    if kind == "hash":
        return f"#{_digits(rng, rng.choice((5, 6)))}"
    if kind == "letter-digit":
        return f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(1, 9)}-{_digits(rng, 5)}"
    if kind == "grouped":
        return f"{_digits(rng, 4)}-{_digits(rng, 4)}-{_digits(rng, 2)}"
    return _digits(rng, rng.choice((5, 6, 7, 8)))


def _id_core(order_id: str) -> str:
    return re.sub(r"\D", "", order_id)


def _self_describing(order_id: str) -> bool:
    """Whether the id reads as an order id on its own, without the word "order" beside it."""
    return order_id.lower().startswith(("ord", "#"))


class IdSource:
    """Fresh order ids; never one whose digits appear in `forbidden` (the other split's ids)."""

    def __init__(self, rng: random.Random, forbidden: frozenset[str] = frozenset()) -> None:
        self._rng = rng
        self._forbidden = forbidden
        self.cores: set[str] = set()

    def draw(self) -> str:
        while True:
            order_id = _random_id(self._rng)
            core = _id_core(order_id)
            if core not in self._forbidden and core not in self.cores:
                self.cores.add(core)
                return order_id


def _mention(rng: random.Random, order_id: str) -> str:
    """How a customer names the order. The label is always the id token alone, as written: "order
    no. 44871" gives "44871", "#88231" keeps its "#", "ord-5521" keeps its case."""
    forms = ["order {id}", "my order {id}", "order number {id}", "my order number {id}", "order no. {id}"]
    forms += ["order ID {id}"] if order_id[0].isdigit() else []
    if _self_describing(order_id):
        forms += ["{id}"] * 4
    return rng.choice(forms).replace("{id}", ID_MARK)


# --------------------------------------------------------------------------------------------
# Rendering and noise
# --------------------------------------------------------------------------------------------

SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Person:
    """Who writes one request: a greeting, a sign-off and the template all use the same name."""

    first: str
    last: str

    @classmethod
    def draw(cls, rng: random.Random) -> Person:
        return cls(rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))


def _fill(rng: random.Random, text: str, order_id: str | None, person: Person) -> str:
    pools = {
        "date": DATES,
        "when": WHENS,
        "amount": AMOUNTS,
        "relative": RELATIVES,
        "years": YEARS,
        "phone": PHONES,
    }

    def slot(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("order", "oid"):
            if order_id is None:
                raise ValueError(f"template needs an order id: {text!r}")
            return _mention(rng, order_id) if name == "order" else ID_MARK
        if name == "first":
            return person.first
        if name == "name":
            return f"{person.first} {person.last}"
        return rng.choice(pools[name])

    return SLOT.sub(slot, text)


def _outside_id(text: str, change: Callable[[str], str]) -> str:
    """Apply `change` to the text around the order id, leaving the id itself alone."""
    return ID_MARK.join(change(part) for part in text.split(ID_MARK))


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:] if text[:1].isalpha() else text


def _vary_end(rng: random.Random, text: str) -> str:
    """Customers end sentences loosely: drop, double or swap the final punctuation."""
    match = re.search(r"[.!?]+$", text)
    body, end = (text[: match.start()], match.group()) if match else (text, "")
    if end.startswith("?"):
        options = ("?", "?", "", "??", "?!")
    elif end.startswith("!"):
        options = ("!", "", "!!", ".", "!!!")
    else:
        options = (end, "", ".", "!", "...")
    return body + rng.choice(options)


def _add_typos(rng: random.Random, text: str) -> str:
    words = list(re.finditer(r"[A-Za-z']+", text))
    candidates = [m for m in words if m.group().lower() in TYPOS]
    if not candidates:
        return text
    chosen = rng.sample(candidates, min(len(candidates), rng.choice((1, 1, 2))))
    for match in sorted(chosen, key=lambda m: m.start(), reverse=True):
        word = match.group()
        typo = rng.choice(TYPOS[word.lower()])
        typo = typo.capitalize() if word[0].isupper() else typo
        text = text[: match.start()] + typo + text[match.end() :]
    return text


def _swap_letters(rng: random.Random, text: str) -> str:
    """A fat-finger transposition inside one longer word."""
    words = list(re.finditer(r"[A-Za-z]{5,}", text))
    if not words:
        return text
    match = rng.choice(words)
    i = match.start() + rng.randint(1, len(match.group()) - 3)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def _noise(rng: random.Random, text: str, allow_shouting: bool) -> str:
    if rng.random() < 0.22:
        text = _outside_id(text, lambda part: _add_typos(rng, part))
    if rng.random() < 0.05:
        text = _outside_id(text, lambda part: _swap_letters(rng, part) if rng.random() < 0.5 else part)
    case = rng.choices(("keep", "lower", "first-lower", "upper"), weights=(62, 22, 10, 6))[0]
    if case == "lower":
        text = _outside_id(text, str.lower)
    elif case == "first-lower":
        text = text[:1].lower() + text[1:]
    elif case == "upper" and allow_shouting:
        text = _outside_id(text, str.upper)
    return text


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    intent: str
    template: str
    held_out: bool
    request: str
    target: str


def dedup_key(text: str) -> str:
    """Stricter than lowercasing and collapsing whitespace: punctuation and emoji are ignored too,
    so "Hi!" in eval cannot pass for new next to "hi" in train."""
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


def _urgency(rng: random.Random, intent: Intent) -> str | None:
    roll = rng.random()
    if roll < intent.p_high:
        return "high"
    if roll < intent.p_high + intent.p_low:
        return "low"
    return None


def _render(
    rng: random.Random, catalogue: Catalogue, intent: Intent, template: str, ids: IdSource
) -> Example:
    needs_id = "{order}" in template or "{oid}" in template
    attach = intent.tool == "escalate" and not needs_id and rng.random() < intent.attach_order
    order_id = ids.draw() if needs_id or attach else None
    person = Person.draw(rng)
    core = _fill(rng, template, order_id, person)
    if rng.random() < 0.85:
        core = _capitalise(core)
    if rng.random() < 0.35:
        core = _vary_end(rng, core)
    before: list[str] = []
    after: list[str] = []
    if intent.style != "bare" and rng.random() < 0.35:
        before.append(_fill(rng, rng.choice(PREFIXES), None, person))
        # "Hi, where is..." reads more natural than "Hi, Where is..." (but keep "Hi, I'm ...").
        if before[-1].endswith((",", "so")) and not re.match(r"I\b", core) and rng.random() < 0.7:
            core = core[:1].lower() + core[1:]
    urgency = _urgency(rng, intent) if intent.tool == "escalate" else None
    cue_first = urgency == "high" and rng.random() < 0.35
    if cue_first:
        before.append(rng.choice(HIGH_PREFIXES))
    if intent.style == "full" and rng.random() < 0.3:
        (before if rng.random() < 0.5 else after).append(_fill(rng, rng.choice(CONTEXTS), None, person))
    if attach:
        after.append(_fill(rng, rng.choice(ORDER_CLAUSES), order_id, person))
    if urgency == "high" and not cue_first:
        after.append(rng.choice(HIGH_SUFFIXES))
    elif urgency == "low":
        after.append(rng.choice(LOW_SUFFIXES))
    if intent.style != "bare" and rng.random() < 0.3:
        after.append(_fill(rng, rng.choice(SUFFIXES), None, person))
    text = " ".join([*before, core, *after])
    # Shouting is not an urgency cue here; keeping it off calm escalations keeps that rule clean.
    text = _noise(rng, text, allow_shouting=intent.tool != "escalate" or urgency == "high")
    request = " ".join(text.replace(ID_MARK, order_id or "").split())
    return Example(intent.key, template, False, request, _target(catalogue, intent, order_id, urgency))


def _target(catalogue: Catalogue, intent: Intent, order_id: str | None, urgency: str | None) -> str:
    if intent.tool is None:
        return serialize_no_tool(intent.reason)
    arguments: dict[str, str] = {}
    if intent.tool == "escalate":
        arguments["topic"] = intent.fixed["topic"]
        if urgency is not None:
            arguments["urgency"] = urgency
    if order_id is not None:
        arguments["order_id"] = order_id
    if "reason" in intent.fixed:
        arguments["reason"] = intent.fixed["reason"]
    return serialize_call(catalogue, intent.tool, arguments)


def _deck(rng: random.Random, items: Sequence[str]) -> Iterator[str]:
    """Cycle through shuffled copies so every template is used about equally often."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainder; ties go to the earlier)."""
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def build_split(
    rng: random.Random,
    catalogue: Catalogue,
    size: int,
    ids: IdSource,
    held_share: float,
    taken: set[str],
) -> list[Example]:
    """`size` examples, none colliding (by `dedup_key`) with `taken`, which is updated."""
    counts = _allocate(size, [i.weight for i in INTENTS])
    held_counts = _allocate(
        round(size * held_share), [c if i.held_out else 0 for c, i in zip(counts, INTENTS, strict=True)]
    )
    examples: list[Example] = []
    for intent, count, held in zip(INTENTS, counts, held_counts, strict=True):
        for templates, n, is_held in ((intent.held_out, held, True), (intent.templates, count - held, False)):
            deck = _deck(rng, templates)
            for _ in range(n):
                examples.append(_unique(rng, catalogue, intent, deck, ids, taken, is_held))
    rng.shuffle(examples)
    return examples


def _unique(
    rng: random.Random,
    catalogue: Catalogue,
    intent: Intent,
    deck: Iterator[str],
    ids: IdSource,
    taken: set[str],
    held: bool,
) -> Example:
    for _ in range(500):
        example = _render(rng, catalogue, intent, next(deck), ids)
        key = dedup_key(example.request)
        if key not in taken:
            taken.add(key)
            return dataclasses.replace(example, held_out=held)
    raise RuntimeError(f"{intent.key}: cannot find another distinct request; add templates")


def check_templates() -> None:
    """Guard the labelling rules the templates rely on; a bad edit fails loudly here."""
    seen: set[str] = set()
    for intent in INTENTS:
        for template in (*intent.templates, *intent.held_out):
            if template in seen:
                raise ValueError(f"template used twice: {template!r}")
            seen.add(template)
            names_order = "{order}" in template or "{oid}" in template
            if intent.tool in ("track_order", "request_refund") and not names_order:
                raise ValueError(f"{intent.key}: template lacks an order id: {template!r}")
            if intent.tool is None and names_order:
                raise ValueError(f"{intent.key}: no_tool template names an order: {template!r}")
            if intent.tool == "escalate" and URGENCY_CUE.search(template):
                raise ValueError(f"{intent.key}: urgency cue in template: {template!r}")
            if intent.key == "refund.unstated" and REASON_CUE.search(template):
                raise ValueError(f"{intent.key}: refund reason cue in template: {template!r}")
    for piece in (*PREFIXES, *SUFFIXES, *CONTEXTS, *ORDER_CLAUSES):
        if URGENCY_CUE.search(piece) or REASON_CUE.search(piece):
            raise ValueError(f"decoration is not label-neutral: {piece!r}")
    for piece in (*HIGH_PREFIXES, *HIGH_SUFFIXES, *LOW_SUFFIXES):
        if not URGENCY_CUE.search(piece):
            raise ValueError(f"urgency piece without a cue: {piece!r}")


def build(seed: int, n_train: int, n_eval: int) -> tuple[Catalogue, list[Example], list[Example]]:
    check_templates()
    catalogue = load_catalogue(TOOLS_FILE)
    taken: set[str] = set()
    train_ids = IdSource(random.Random(seed * 7 + 1))
    train = build_split(random.Random(seed * 7 + 2), catalogue, n_train, train_ids, 0.0, taken)
    # Eval ids share no digits with train's, and `taken` keeps eval requests out of train's.
    eval_ids = IdSource(random.Random(seed * 7 + 3), frozenset(train_ids.cores))
    evaluation = build_split(random.Random(seed * 7 + 4), catalogue, n_eval, eval_ids, HELD_OUT_SHARE, taken)
    for example in (*train, *evaluation):
        parsed = parse_tool_call(example.target, catalogue)
        if not isinstance(parsed, ToolCall | NoTool) or parsed.canonical != example.target:
            raise AssertionError(f"target does not round-trip: {example.target}")
    return catalogue, train, evaluation


def to_jsonl(catalogue: Catalogue, examples: Sequence[Example]) -> str:
    system = render_system_prompt(catalogue, "full")
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": example.request},
                    {"role": "assistant", "content": example.target},
                ]
            },
            ensure_ascii=False,
        )
        for example in examples
    ]
    return "".join(line + "\n" for line in lines)


def with_followups(jsonl: str, seed: int) -> str:
    """The same rows, each call followed by a stand-in tool result and the reply stating it
    (`followups.py`), from a random stream of its own."""
    from followups import followup

    rng = random.Random(seed)
    lines = []
    for line in jsonl.splitlines():
        row = json.loads(line)
        call = json.loads(row["messages"][-1]["content"])
        if call["tool"] != "no_tool":
            output, answer = followup(rng, call)
            row["messages"] += [{"role": "tool", "content": output}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps(row, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this folder)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="train rows")
    parser.add_argument("--eval", type=int, default=DEFAULT_EVAL, help="eval rows")
    args = parser.parse_args(argv)
    catalogue, train, evaluation = build(args.seed, args.train, args.eval)
    for name, examples, stream in (("train", train, 5), ("eval", evaluation, 6)):
        text = to_jsonl(catalogue, examples)
        path = atomic_write_text(args.out / f"{name}.jsonl", text)
        print(f"wrote {len(examples)} rows to {path}")
        # The same rows with follow-ups, for the answer step (README: "Answers").
        path = atomic_write_text(
            args.out / f"{name}_answers.jsonl", with_followups(text, args.seed * 7 + stream)
        )
        print(f"wrote {len(examples)} rows with follow-ups to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
