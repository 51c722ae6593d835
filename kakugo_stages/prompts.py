"""Instructions sent to the teacher, written for Kakugo.

Each template carries the meaning of the corresponding instruction in the authors'
released scripts (`Peter-Devine/kakugo`, gen/ and translate/), in our own words;
`docs/recipe.md` lists every one beside theirs. As there, list and prompt requests come
with a system prompt: the topic namer, the scenario namer, the prompt writer (the
recipe's main lever on the register of the prompts: a {language}-speaking user, casual
and natural), the reviser, the responder and the translator.

Every prompt-generation request asks for exactly one JSON object in a fenced ```json
block, with a fixed key, so `parsing.py` can read it. Instructions are in English (the
teacher follows English instructions best); the text it writes for users is in the
target language. Each function returns a list of chat messages.
"""

from __future__ import annotations

import json

Messages = list[dict[str, str]]


def _chat(system: str, user: str) -> Messages:
    return [
        {"role": "system", "content": system.strip()},
        {"role": "user", "content": user.strip()},
    ]


def _json_tail(key: str, kind: str) -> str:
    return (
        f'Reply with one JSON object in a ```json fenced block, with a single key "{key}" '
        f"whose value is {kind}. Write nothing after the block."
    )


# --------------------------------------------------------------------------- prompt writer

#: The system prompt of every request that writes user prompts (topics, scenarios,
#: contexts): who the teacher plays, and the register of what it writes.
PROMPT_WRITER_SYSTEM = """\
You write prompts in {language} for an AI assistant, as a {language}-speaking user of
that assistant would write them. Write natural {language}: casual and relaxed, the way
people who speak {language} really talk to an assistant, with colloquial, informal
{language} wherever it suits, and as simply as you can. Make the prompts varied,
practical and realistic, and never address the assistant itself."""


def _writer(language: str, user: str) -> Messages:
    return _chat(PROMPT_WRITER_SYSTEM.replace("{language}", language), user)


# --------------------------------------------------------------------------- topics

TOPIC_NAMER_SYSTEM = """\
You come up with topics. Keep every topic name as short as you can, and never use
asterisks (*) anywhere in your answer."""


def topic_list(subject: str, count: int, language: str, specific: bool) -> Messages:
    """Topics covering a subject: seeds -> macro-topics and macro-topics -> topics alike.
    The language-specific branch asks for topics that matter to the language's speakers."""
    focus = f"\n\nChoose topics that matter to people who speak {language}." if specific else ""
    return _chat(
        TOPIC_NAMER_SYSTEM,
        f"""
Write {count} topics covering the main aspects of "{subject}": things, people, places,
objects, concepts, themes or anything else that belongs to it. The topics should be
diverse, comprehensive and concise, written in simple English.{focus}

{_json_tail("topics", f"a list of {count} strings")}
""",
    )


def topic_prompts(topic: str, low: int, high: int, language: str) -> Messages:
    """`low` to `high` prompts about a topic; the teacher decides how many."""
    many = (
        f"Write {high} prompts"
        if low == high
        else f"Write from {low} up to {high} prompts (you choose how many)"
    )
    count = str(high) if low == high else f"{low} to {high}"
    return _writer(
        language,
        f"""
{many} in {language}, related to "{topic}", that a user would ask an AI assistant.

{_json_tail("prompts", f"a list of {count} strings written in {language}")}
""",
    )


# --------------------------------------------------------------------------- scenarios

SCENARIO_NAMER_SYSTEM = """\
You come up with scenarios of AI assistant use. Keep every scenario name as short as you
can."""


def _scenario_rules(language: str, specific: bool) -> str:
    rules = (
        "Never use asterisks (*) anywhere in your answer.\n\n"
        "Keep the scenarios general and concise rather than detailed. They should be "
        "diverse, realistic, practical and comprehensive, and written in English."
    )
    if specific:
        rules += (
            f"\n\nThink of the situations in which a {language} speaker would use an AI "
            f"assistant: the scenarios should be specific to users who speak {language}."
        )
    return rules


def broad_scenarios(count: int, language: str, specific: bool) -> Messages:
    return _chat(
        SCENARIO_NAMER_SYSTEM,
        f"""
Write the {count} most popular scenarios in which people use an AI chatbot.

{_scenario_rules(language, specific)}

{_json_tail("scenarios", f"a list of {count} strings")}
""",
    )


def detailed_scenarios(broad: str, count: int, language: str, specific: bool) -> Messages:
    """Specific scenarios of one broad one; language-agnostic unless `specific` (the
    broad scenario came from the language-specific list)."""
    return _chat(
        SCENARIO_NAMER_SYSTEM,
        f"""
Write {count} specific, practical scenarios in which people would use an AI assistant
when they use it for this task: "{broad}".

{_scenario_rules(language, specific)}

{_json_tail("scenarios", f"a list of {count} strings")}
""",
    )


def scenario_prompts(scenario: str, count: int, language: str) -> Messages:
    return _writer(
        language,
        f"""
Write {count} prompts in {language} that a user would ask an AI chatbot while using it in
this scenario: "{scenario}".

{_json_tail("prompts", f"a list of {count} strings written in {language}")}
""",
    )


# --------------------------------------------------------------------------- contexts

#: What a context prompt asks the assistant to do with the text ("... to <verb> the
#: text"), by task type.
CONTEXT_TASKS = {
    "translate": "translate",
    "summarize": "summarize",
    "improve": "improve",
    "classify": "classify",
    "question_answering": "answer a question about",
}


def context_prompts(document: str, task: str, count: int, language: str) -> Messages:
    return _writer(
        language,
        f"""
Write {count} prompts in {language} about the following text:

\"\"\"
{document}
\"\"\"

Write the prompts in natural {language}; each should ask the AI assistant to
{CONTEXT_TASKS[task]} the text.

{_json_tail("prompts", f"a list of {count} strings written in {language}")}
""",
    )


# --------------------------------------------------------------------------- revision

REVISER_SYSTEM = """\
You rewrite prompts written in {language} to make them better. Use any of these changes,
alone or combined:
- more natural, casual {language}, as a {language} speaker would really say it to a
  helpful assistant;
- added context: why the request matters, background it needs, or other plausible
  detail;
- another format or style: what the answer should or should not do, a length for it (one
  phrase, a number of words, ...), or a format it must take;
- a longer prompt, where it asks for elaboration on a subject or discussion of a point;
- further related questions, statements or instructions."""

REVISER_CONTEXT_RULE = """

The prompt comes with a context text. Never write any of that text in your answer:
rewrite only the prompt, and let the rewritten prompt still refer to the text."""


def revise_prompt(prompt: str, language: str, document: str | None = None) -> Messages:
    """The reviser sees a context prompt's document, and must keep referring to it
    without repeating it."""
    system = REVISER_SYSTEM.replace("{language}", language)
    shown = f'Prompt:\n"""\n{prompt}\n"""'
    if document is not None:
        system += REVISER_CONTEXT_RULE
        shown = f'Context text:\n"""\n{document}\n"""\n\n{shown}'
    return _chat(
        system,
        f"""
{shown}

{_json_tail("improved_prompt", f"the improved prompt, a string written in {language}")}
""",
    )


# --------------------------------------------------------------------------- responses

RESPONSE_SYSTEM_PROMPT = """\
You are a helpful chat assistant, fluent in {language}. Answer in {language} as a native
speaker would, in words any {language} speaker fully understands, unless the user asks
for something else. Say only what is correct, and follow the user's instructions
correctly and completely. Use as little formatting as you can (no elaborate lists,
emphasis or Markdown) unless the user wants it. Do not write URLs, which could be made
up: if asked for one, say you cannot give links and suggest how to find it, such as what
to search for. Keep the tone simple and conversational, and the answer as short as it can
be while still answering the user."""


def response_messages(
    prompt: str, language: str, system_prompt: str | None = None, document: str | None = None
) -> Messages:
    system = (system_prompt or RESPONSE_SYSTEM_PROMPT).replace("{language}", language)
    user = f"{document.strip()}\n\n{prompt}" if document else prompt
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- translation

TRANSLATOR_SYSTEM = """\
You translate from English into {language}. You are given a conversation in English
between a user and an assistant, as a list of messages (objects with a role and a
content). Give back its {language} translation as the same list of messages, in the same
format: keep the keys and the structure unchanged. Your answer holds that list and
nothing else."""


def translate_conversation(messages: list[dict[str, str]], language: str) -> Messages:
    conversation = json.dumps(messages, ensure_ascii=False, indent=1)
    shape = _json_tail(
        "messages",
        "the translated list: one object per message, in the same order, each with the keys "
        '"role" (unchanged) and "content" (translated)',
    )
    return _chat(
        TRANSLATOR_SYSTEM.replace("{language}", language),
        f"""
```json
{conversation}
```

{shape}
""",
    )


# --------------------------------------------------------------------------- answer schemas
# JSON schemas of the answers above, for servers with structured output.


def list_schema(key: str, count: int, minimum: int = 1) -> dict:
    return {
        "type": "object",
        "properties": {
            key: {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": minimum,
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
