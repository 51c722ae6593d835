"""Instructions sent to the teacher, written for Kakugo.

Every prompt-generation request asks for exactly one JSON object in a fenced ```json
block, with a fixed key, so `parsing.py` can read it. Instructions are in English (the
teacher follows English instructions best); the text it writes for users is in the
target language. Each function returns a list of chat messages.
"""

from __future__ import annotations

import json

Messages = list[dict[str, str]]


def _user(text: str) -> Messages:
    return [{"role": "user", "content": text.strip()}]


def _json_tail(key: str, kind: str) -> str:
    return (
        f'Reply with one JSON object in a ```json fenced block, with a single key "{key}" '
        f"whose value is {kind}. Write nothing after the block."
    )


# --------------------------------------------------------------------------- topics


def macro_topics(seed: str, count: int, language: str, specific: bool) -> Messages:
    focus = (
        f"Every subject must matter to people who speak {language}: their places, lives, "
        "history and concerns."
        if specific
        else "Cover the area broadly, from everyday matters to specialist ones."
    )
    return _user(
        f"""
We are collecting subjects that people might ask an AI assistant about.
Broad area: "{seed}".
List {count} distinct, fairly general sub-areas of this area. {focus}
Keep each one short (a few words), in English, and do not repeat yourself.
{_json_tail("topics", f"a list of {count} strings")}
"""
    )


def topics(macro_topic: str, seed: str, count: int, language: str, specific: bool) -> Messages:
    focus = (
        f"Choose topics that are relevant to {language} speakers in particular."
        if specific
        else "Choose topics of general interest."
    )
    return _user(
        f"""
Within the area "{seed}", take the sub-area "{macro_topic}".
Name {count} specific topics inside it that a user could ask about. {focus}
Keep each topic short, in English, and make them clearly different from one another.
{_json_tail("topics", f"a list of {count} strings")}
"""
    )


def topic_prompts(topic: str, count: int, language: str) -> Messages:
    return _user(
        f"""
Write {count} different requests that a real user could send to an AI assistant about
the topic "{topic}". Write them in {language} only, as a fluent native speaker would:
questions, tasks or requests for advice, of varied length and difficulty. Each request
must stand on its own and must not mention these instructions.
{_json_tail("prompts", f"a list of {count} strings written in {language}")}
"""
    )


# --------------------------------------------------------------------------- scenarios


def broad_scenarios(count: int, language: str, specific: bool) -> Messages:
    focus = (
        f"Think of situations typical of the lives of {language} speakers: their work, "
        "communities, traditions, institutions and surroundings."
        if specific
        else "Cover work, study, home, health, money, travel, creativity, technology and more."
    )
    return _user(
        f"""
List {count} broad kinds of situation in which someone would turn to an AI assistant
for help (for example "planning a family celebration"). {focus}
Each entry is a short phrase in English; no two entries may overlap much.
{_json_tail("scenarios", f"a list of {count} strings")}
"""
    )


def detailed_scenarios(broad: str, count: int, language: str) -> Messages:
    return _user(
        f"""
Take this broad situation in which a {language} speaker uses an AI assistant: "{broad}".
Describe {count} concrete, specific versions of it: who the user is, what they need and
why. One or two sentences each, in English, all clearly different.
{_json_tail("scenarios", f"a list of {count} strings")}
"""
    )


def scenario_prompts(scenario: str, count: int, language: str) -> Messages:
    return _user(
        f"""
Situation: {scenario}
Write {count} messages that the user in this situation might send to an AI assistant.
Write them in {language} only, naturally, as a native speaker writes; vary their length,
tone and what they ask for. Do not refer to the situation description itself.
{_json_tail("prompts", f"a list of {count} strings written in {language}")}
"""
    )


# --------------------------------------------------------------------------- contexts

CONTEXT_TASKS = {
    "translate": "ask for a translation of part or all of the text into another language",
    "summarize": "ask for a summary of the text, in a given length or form",
    "improve": "ask for the text to be improved, corrected, or rewritten in another style",
    "classify": "ask for the text to be classified, labelled or analysed (topic, tone, genre)",
    "question_answering": "ask a question that the text answers or helps to answer",
}


def context_prompts(document: str, task: str, count: int, language: str) -> Messages:
    return _user(
        f"""
Below is a text in {language}. A user will paste it into a chat with an AI assistant and
add a request about it. Write {count} such requests, in {language} only. Each request
should {CONTEXT_TASKS[task]}. Do not copy the text into the request: the text is
attached separately.

Text:
\"\"\"
{document}
\"\"\"
{_json_tail("prompts", f"a list of {count} strings written in {language}")}
"""
    )


# --------------------------------------------------------------------------- revision

REVISION_STYLES = (
    "make it sound more natural, as a native speaker would actually write it",
    "add some background or personal context that explains why the user asks",
    "ask for the answer in a particular format (a list, a table, a letter, steps...)",
    "ask for a particular length or style of answer",
    "add one or two related follow-up questions to the same message",
)


def revise_prompt(prompt: str, style: str, language: str, has_document: bool) -> Messages:
    doc_rule = (
        " The user's message comes with an attached text; do not repeat or quote that "
        "text in the rewritten message."
        if has_document
        else ""
    )
    return _user(
        f"""
Here is a message a user wrote to an AI assistant, in {language}:
\"\"\"
{prompt}
\"\"\"
Rewrite it so that it is a better, more realistic request: {style}. Keep it in
{language}, keep what the user wants, and keep it self-contained.{doc_rule}
{_json_tail("improved_prompt", f"the rewritten message, a string in {language}")}
"""
    )


# --------------------------------------------------------------------------- responses

RESPONSE_SYSTEM_PROMPT = """\
You are a helpful assistant answering a user who writes in {language}. Answer in fluent,
natural {language}, the way an educated native speaker writes. Make sure what you say is
correct. Keep formatting light: plain paragraphs, and lists only where they really help.
Do not write web addresses; if the user needs a source, tell them how to find it.
Prefer short answers that fully address the request."""


def response_messages(
    prompt: str, language: str, system_prompt: str | None = None, document: str | None = None
) -> Messages:
    system = (system_prompt or RESPONSE_SYSTEM_PROMPT).replace("{language}", language)
    user = f"{document.strip()}\n\n{prompt}" if document else prompt
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- translation


def translate_conversation(messages: list[dict[str, str]], language: str) -> Messages:
    conversation = json.dumps(messages, ensure_ascii=False, indent=1)
    shape = _json_tail(
        "messages",
        "a list with one object per message, in the same order, each with exactly the keys "
        '"role" (unchanged) and "content" (translated)',
    )
    return _user(
        f"""
Translate the conversation below, between a user and an AI assistant, from English into
{language}. Translate every message completely and faithfully, as a fluent native speaker
of {language} would write it. Keep the formatting (line breaks, lists, markdown) and keep
code, numbers and proper names as they are. Do not answer the user, do not merge or
split messages, and add nothing of your own.
{shape}

Conversation:
```json
{conversation}
```
"""
    )


# --------------------------------------------------------------------------- answer schemas
# JSON schemas of the answers above, for servers with structured output.


def list_schema(key: str, count: int) -> dict:
    return {
        "type": "object",
        "properties": {
            key: {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": count,
            }
        },
        "required": [key],
        "additionalProperties": False,
    }


def string_schema(key: str) -> dict:
    return {
        "type": "object",
        "properties": {key: {"type": "string", "minLength": 1}},
        "required": [key],
        "additionalProperties": False,
    }


def messages_schema(count: int) -> dict:
    message = {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {"type": "string"},
        },
        "required": ["role", "content"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "messages": {"type": "array", "items": message, "minItems": count, "maxItems": count}
        },
        "required": ["messages"],
        "additionalProperties": False,
    }
