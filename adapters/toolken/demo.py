"""The built-in toolken demo: 12 synthetic tools (weather, currency, alarms, ...) as tool tokens.

Requests are phrased from templates with slots (cities, currencies, times, ...); each tool has
eight templates, five for training and three held out, so the held-out accuracy measures
phrasings the adapter never saw. Small talk (no tool: a short text answer) is mixed in, so tool
tokens learn when not to fire. The data goes through the same trainer as
`floe adapters train toolken` (`train.py`), deterministically on one CPU thread.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

CITIES = ["Paris", "Oslo", "Lima", "Tokyo", "Cairo", "Denver"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP"]
GENRES = ["jazz", "rock", "classical", "hip hop"]
TICKERS = ["AAPL", "MSFT", "NVDA", "TSLA"]
TOPICS = ["sports", "science", "politics", "business"]
LANGUAGES = ["French", "German", "Spanish", "Japanese"]
DISHES = ["lasagna", "pancakes", "curry", "tacos"]
PEOPLE = ["Alice", "Bob", "my boss", "the team"]
TASKS = ["call mom", "water the plants", "pay rent", "stretch"]


def _enum(values: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": values}


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}}}


def _int(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _text(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit}


TOOLS = [
    _tool("get_weather", "Weather forecast for a city", {"city": _enum(CITIES), "days": _int(1, 7)}),
    _tool("convert_currency", "Convert an amount between currencies",
          {"amount": _int(1, 10000), "source": _enum(CURRENCIES), "target": _enum(CURRENCIES)}),
    _tool("set_alarm", "Set an alarm", {"hour": _int(0, 23), "minute": _int(0, 59)}),
    _tool("send_email", "Send an email", {"to": _text(24), "subject": _text(40)}),
    _tool("play_music", "Play music of a genre", {"genre": _enum(GENRES)}),
    _tool("book_flight", "Book a flight", {"origin": _enum(CITIES), "destination": _enum(CITIES)}),
    _tool("translate_text", "Translate text", {"text": _text(60), "language": _enum(LANGUAGES)}),
    _tool("find_recipe", "Find a recipe", {"dish": _text(30)}),
    _tool("get_stock_price", "Latest stock price", {"ticker": _enum(TICKERS)}),
    _tool("set_reminder", "Remind me of a task", {"task": _text(40), "minutes": _int(1, 600)}),
    _tool("get_news", "Latest headlines on a topic", {"topic": _enum(TOPICS)}),
    _tool("calculate_tip", "Tip for a restaurant bill", {"bill": _int(1, 1000), "percent": _int(0, 40)}),
]

# per tool: eight phrasings; the first five train, the last three are held out
TEMPLATES: dict[str, list[str]] = {
    "get_weather": ["What is the weather in {city}?", "Will it rain in {city} tomorrow?",
                    "Give me the forecast for {city}.", "How hot is it in {city} today?",
                    "Is it sunny in {city} this week?", "Should I pack an umbrella for {city}?",
                    "Weather report for {city}, please.", "How cold will {city} be over the weekend?"],
    "convert_currency": ["Convert 100 {cur} to {cur2}.", "How much is 50 {cur} in {cur2}?",
                         "What is the exchange rate from {cur} to {cur2}?", "Change 20 {cur} into {cur2}.",
                         "I need {cur2} for 300 {cur}.", "How many {cur2} do I get for 75 {cur}?",
                         "Exchange 10 {cur} to {cur2} for me.", "What are 250 {cur} worth in {cur2}?"],
    "set_alarm": ["Wake me up at {hour} am.", "Set an alarm for {hour}:30.", "Alarm at {hour} o'clock please.",
                  "I need to get up at {hour} tomorrow.", "Ring the alarm at {hour}:15.",
                  "Make sure I wake at {hour} in the morning.", "Can you set my alarm to {hour}?",
                  "Alarm for {hour}:45, thanks."],
    "send_email": ["Email {person} about the meeting.", "Send {person} a message about lunch.",
                   "Write an email to {person} saying I am late.", "Mail {person} the report.",
                   "Drop {person} an email about the budget.", "Let {person} know by email that I agree.",
                   "Compose an email for {person} about the trip.", "Shoot {person} a quick email."],
    "play_music": ["Play some {genre}.", "Put on {genre} music.", "I want to listen to {genre}.",
                   "Start a {genre} playlist.", "Some {genre} songs, please.", "Can you play {genre} for me?",
                   "Music time: {genre}!", "Turn on a little {genre}."],
    "book_flight": ["Book a flight from {city} to {city2}.", "I need a plane ticket to {city2} from {city}.",
                    "Fly me from {city} to {city2} next week.", "Reserve a seat on a flight to {city2}.",
                    "Find me a flight {city} to {city2}.", "Get me on a plane from {city} to {city2}.",
                    "Flights to {city2} leaving {city}, please.", "I want to fly to {city2}."],
    "translate_text": ["Translate 'good morning' into {lang}.", "How do you say thank you in {lang}?",
                       "Say 'where is the station' in {lang}.", "Put this sentence into {lang}: I am hungry.",
                       "What is 'cheese' in {lang}?", "Translate hello to {lang}.",
                       "Give me the {lang} for 'see you soon'.", "In {lang}, how would I say goodbye?"],
    "find_recipe": ["How do I make {dish}?", "Find me a recipe for {dish}.", "I want to cook {dish} tonight.",
                    "What do I need for {dish}?", "Show me how to bake {dish}.", "Recipe for {dish}, please.",
                    "Teach me to prepare {dish}.", "What are the steps for homemade {dish}?"],
    "get_stock_price": ["What is {ticker} trading at?", "Stock price of {ticker}?", "How is {ticker} doing today?",
                        "Give me the share price for {ticker}.", "Quote for {ticker}, please.",
                        "Did {ticker} go up today?", "Check the {ticker} stock for me.", "Where is {ticker} at now?"],
    "set_reminder": ["Remind me to {task} in 20 minutes.", "Don't let me forget to {task}.",
                     "Set a reminder to {task}.", "In an hour, remind me to {task}.", "Nudge me to {task} later.",
                     "Please remind me that I must {task}.", "Ping me to {task} this evening.",
                     "I keep forgetting to {task}; remind me."],
    "get_news": ["What is new in {topic}?", "Latest {topic} headlines.", "Any {topic} news today?",
                 "Give me the {topic} news.", "What happened in {topic} this week?",
                 "Catch me up on {topic}.", "Top stories about {topic}?", "Headlines in {topic}, please."],
    "calculate_tip": ["What tip should I leave on a {bill} dollar bill?", "Calculate a tip for {bill} dollars.",
                      "How much is 15 percent of {bill}?", "Our dinner was {bill}; what is the tip?",
                      "Tip on {bill} at 20 percent?", "Work out the gratuity for a {bill} check.",
                      "The bill is {bill} dollars, how much should I tip?", "Figure the tip for {bill} bucks."],
}
SMALL_TALK = ["Hi there!", "How are you doing?", "Tell me a joke.", "What is your name?", "Thanks a lot!",
              "Good night.", "Who made you?", "Nice to meet you.", "What can you do?", "Have a great day!"]
ANSWERS = ["Hello! How can I help?", "I am doing well, thanks.", "Happy to help.", "Glad to chat with you."]
TRAIN_TEMPLATES, TRAIN_SMALL_TALK = 5, 6
FILLS, TRAIN_SEED, TEST_SEED = 6, 1, 2
CHANCE = 1 / len(TOOLS)


def _fill(template: str, rng: random.Random) -> str:
    cities = rng.sample(CITIES, 2)
    currencies = rng.sample(CURRENCIES, 2)
    return template.format(city=cities[0], city2=cities[1], cur=currencies[0], cur2=currencies[1],
                           hour=rng.randint(5, 11), person=rng.choice(PEOPLE), genre=rng.choice(GENRES),
                           lang=rng.choice(LANGUAGES), dish=rng.choice(DISHES), ticker=rng.choice(TICKERS),
                           task=rng.choice(TASKS), topic=rng.choice(TOPICS), bill=rng.randint(12, 240))


def _arguments(name: str, rng: random.Random) -> dict[str, Any]:
    """Schema-valid arguments (the trainer learns tool choice; these only make the lines complete)."""
    schema = next(t for t in TOOLS if t["function"]["name"] == name)["function"]["parameters"]
    out: dict[str, Any] = {}
    for key, spec in schema["properties"].items():
        if "enum" in spec:
            out[key] = rng.choice(spec["enum"])
        elif spec["type"] == "integer":
            out[key] = rng.randint(spec["minimum"], spec["maximum"])
        else:
            out[key] = rng.choice(TASKS)[: spec["maxLength"]]
    return out


def requests(held_out: bool, seed: int, fills: int = FILLS) -> list[tuple[str, str | None]]:
    """(user text, tool name or None for small talk); held_out: the phrasings training never sees."""
    rng = random.Random(seed)
    out: list[tuple[str, str | None]] = []
    for name, templates in TEMPLATES.items():
        chosen = templates[TRAIN_TEMPLATES:] if held_out else templates[:TRAIN_TEMPLATES]
        out += [(_fill(t, rng), name) for t in chosen for _ in range(fills)]
    talk = SMALL_TALK[TRAIN_SMALL_TALK:] if held_out else SMALL_TALK[:TRAIN_SMALL_TALK]
    out += [(t, None) for t in talk for _ in range(max(1, fills // 2))]
    return out


def line(text: str, tool: str | None, rng: random.Random) -> dict[str, Any]:
    """One OpenAI chat fine-tuning line with tools and, for a tool request, the assistant's call."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
    if tool is None:
        messages.append({"role": "assistant", "content": rng.choice(ANSWERS)})
    else:
        messages.append({"role": "assistant", "tool_calls": [{
            "id": f"call_{rng.randrange(16**8):08x}", "type": "function",
            "function": {"name": tool, "arguments": json.dumps(_arguments(tool, rng))}}]})
    return {"messages": messages, "tools": TOOLS}


def write_jsonl(path: Path, held_out: bool = False, seed: int = TRAIN_SEED, fills: int = FILLS) -> Path:
    rng = random.Random(seed + 1000)
    with open(path, "w") as fh:
        for text, tool in requests(held_out, seed, fills):
            fh.write(json.dumps(line(text, tool, rng)) + "\n")
    return Path(path)


def evaluate(base_dir: Path, adapter_dir: Path, seed: int = TEST_SEED, fills: int = 3) -> dict[str, float]:
    """Greedy first answer token on held-out phrasings (as the server picks it; no tool listed):
    tool accuracy on tool requests, how often small talk stays text, with chance."""
    import torch
    from safetensors.torch import load_file

    from floe.adapters.toolken import WEIGHTS
    from floe.adapters.toolken.train import load_lm, tool_token_ids

    lm, tokenizer = load_lm(base_dir)
    embedding = load_file(str(Path(adapter_dir) / WEIGHTS))["embedding"]
    ids = tool_token_ids(lm, tokenizer, embedding.shape[0])
    names = [t["function"]["name"] for t in TOOLS]
    right = total = kept = talk = 0
    with torch.no_grad():
        for text, tool in requests(True, seed, fills):
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)
            h = lm.model(input_ids=torch.tensor([prompt])).last_hidden_state[0, -1]
            logits = lm.lm_head(h)
            logits[ids] = embedding @ h
            top = int(logits.argmax())
            picked = names[ids.index(top)] if top in ids else None
            if tool is None:
                talk, kept = talk + 1, kept + (picked is None)
            else:
                total, right = total + 1, right + (picked == tool)
    return {"tool_accuracy": right / total, "small_talk_kept": kept / max(1, talk), "chance": CHANCE,
            "tool_requests": total, "small_talk": talk}


def build(base_dir: Path, out: Path) -> Path:
    """Train the demo adapter for `base_dir` into `out` (deterministic; a few seconds of one thread)."""
    import torch

    from floe.adapters.toolken import MANIFEST
    from floe.adapters.toolken.train import TrainConfig, train_to_dir

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            data = write_jsonl(Path(tmp) / "train.jsonl")
            train_to_dir(Path(base_dir), data, Path(out), TrainConfig(seed=0))
        held_out = evaluate(Path(base_dir), Path(out))
        manifest = json.loads((Path(out) / MANIFEST).read_text())
        manifest["training"] = {**manifest["training"], "data": "synthetic tool requests (demo.py)",
                                "held_out": held_out}
        (Path(out) / MANIFEST).write_text(json.dumps(manifest, indent=1))
    finally:
        torch.set_num_threads(threads)
    return Path(out)
