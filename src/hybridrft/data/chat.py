"""Turn an Example's prompt into chat messages and into the exact text a model is given."""

from __future__ import annotations

from typing import Any

from hybridrft.config.schema import DEFAULT_ANSWER_INSTRUCTION  # one definition, in the lowest layer
from hybridrft.data.example import Example

DEFAULT_SYSTEM_PROMPT: str | None = None


def _with_instruction(content: str, instruction: str | None) -> str:
    # Datasets that already ask for \boxed{} in the prompt should not get the request twice.
    if not instruction or instruction in content:
        return content
    return f"{content}\n\n{instruction}"


def prompt_messages(
    example: Example,
    *,
    system_prompt: str | None = None,
    answer_instruction: str | None = DEFAULT_ANSWER_INSTRUCTION,
) -> list[dict[str, str]]:
    """Chat messages for `example`: an optional system message, then the user turn(s).

    The answer instruction follows the problem after a blank line, so every task asks for the
    answer in the `\\boxed{}` format the rewards read. For prompts that are already chat messages,
    an existing system message wins over `system_prompt`, and the instruction goes into the last
    user message.
    """
    system = system_prompt if system_prompt is not None else DEFAULT_SYSTEM_PROMPT
    if isinstance(example.prompt, str):
        content = _with_instruction(example.prompt, answer_instruction)
        messages = [{"role": "user", "content": content}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return messages

    messages = [dict(message) for message in example.prompt]
    user_turns = [i for i, message in enumerate(messages) if message.get("role") == "user"]
    if not user_turns:
        raise ValueError(f"Example {example.id!r}: chat prompt has no user message")
    last_user = messages[user_turns[-1]]
    last_user["content"] = _with_instruction(last_user["content"], answer_instruction)
    if system and not any(message.get("role") == "system" for message in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def render_prompt(
    tokenizer: Any,
    example: Example,
    *,
    system_prompt: str | None = None,
    answer_instruction: str | None = DEFAULT_ANSWER_INSTRUCTION,
) -> str:
    """The prompt text exactly as the model sees it, ending where the assistant's answer begins.

    Uses the tokenizer's chat template with the generation prompt. A tokenizer without a chat
    template (a base model) gets plain text instead: the system prompt (if any) and a blank line,
    the message contents separated by blank lines, and a final newline.
    """
    messages = prompt_messages(
        example, system_prompt=system_prompt, answer_instruction=answer_instruction
    )
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    system = [m["content"] for m in messages if m.get("role") == "system"]
    turns = [m["content"] for m in messages if m.get("role") != "system"]
    body = "\n\n".join(turns) + "\n"
    return "\n\n".join(system) + "\n\n" + body if system else body
