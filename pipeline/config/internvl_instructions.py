"""MMPR's six chain-of-thought instructions, verbatim from InternVL's public data pipeline.

Source: OpenGVLab/InternVL (MIT licence),
``internvl_chat/tools/reasoning_data_pipeline/utils/constants.py``: ``INSTRUCTION_EN``,
``INSTRUCTION_BOXED_EN``, ``INSTRUCTION_R1_EN`` and their ``_ZH`` twins, which
``mmpr_data_pipeline_correctness.py`` selects by ``--prompt-version`` en / en_v2 /
en_r1 (zh / zh_v2 / zh_r1 for prompt files whose path contains ``_zh_``).  The
texts hold ``{question}`` literally (the reference fills it with ``str.replace``:
the boxed texts contain braces of their own).  The R1 texts carry InternVL's R1
system prompt *inside the user turn*, as the reference sends them.

The template ids are ``internvl_`` + the reference's prompt version, so a build's
provenance names the prompt version it reproduced.
"""
from __future__ import annotations

R1_SYSTEM_PROMPT = "You are an AI assistant that rigorously follows this response protocol:\n\n1. First, conduct a detailed analysis of the question. Consider different angles, potential solutions, and reason through the problem step-by-step. Enclose this entire thinking process within <think> and </think> tags.\n\n2. After the thinking section, provide a clear, concise, and direct answer to the user's question. Separate the answer from the think section with a newline.\n\nEnsure that the thinking process is thorough but remains focused on the query. The final answer should be standalone and not reference the thinking section."

#: prompt version -> instruction text with a literal {question}
INSTRUCTIONS: dict[str, str] = {
    "en": 'Your task is to answer the question below. Give step by step reasoning before you answer, and when you\'re ready to answer, please use the format "Final answer: .."\n\nQuestion:\n\n{question}',
    "en_v2": "{question}\nAnswer the preceding question. The last line of your response should follow this format: 'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion based on the reasoning provided. If you are uncertain or the problem is too complex, make a reasoned guess based on the information provided. Avoid repeating steps indefinitely—provide your best guess even if unsure. Think step by step logically, considering all relevant information before answering.",
    "en_r1": R1_SYSTEM_PROMPT + "\n" + '{question}\nPlease answer the question and put the final answer within \\boxed{}.',
    "zh": '你的任务是回答以下问题。在回答之前，请逐步推理说明您的思路。当你准备好给出答案时，请使用以下格式："答案: ..."\n\n问题:\n\n{question}',
    "zh_v2": '{question}\n请回答上述问题。你的回答最后一行应遵循以下格式：“答案：\\boxed{$FINAL_ANSWER}”（不包含引号），其中“FINAL_ANSWER”是你根据推理得出的最终结论。如果你不确定答案或问题过于复杂，请基于已有信息做出有理有据的猜测。避免无限重复推理步骤——即使不完全确定，也请给出你认为最合理的答案。请一步一步进行逻辑思考，充分考虑所有相关信息后再作答。',
    "zh_r1": R1_SYSTEM_PROMPT + "\n" + '{question}\n请详细回答这个问题并将最终答案用\\boxed{}包住。',
}

#: prompt version -> extraction style (methods.extract) that reads the answer format it asks for
EXTRACTION: dict[str, str] = {
    "en": "final_answer", "en_v2": "boxed", "en_r1": "think",
    "zh": "final_answer_zh", "zh_v2": "boxed", "zh_r1": "think",
}

#: short-answer suffixes the reference strips from a question before wrapping it
SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Please answer Yes or No.",
    "Please answer the question and put the final answer within \\boxed{}.",
)
