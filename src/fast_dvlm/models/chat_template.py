"""The Qwen chat format, written for the tiny models (a real checkpoint brings its own template)."""


def qwen_chat_template(image_markup: str) -> str:
    """A Jinja chat template: a default system turn, `<|im_start|>role\\n...<|im_end|>\\n` turns, and
    each image part rendered as `image_markup` (the processor expands its image token to the image's
    number of visual tokens)."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image_markup}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
