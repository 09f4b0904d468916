"""User priors: an LLM reads a user's profile and history and ranks the advertisers the user will
convert with next, plus a few interests; results live in the Feast view tagged ``user_priors``.

``history`` (event helpers), ``profile`` (profile text within a token budget), ``candidates`` (the
pool an answer may choose from), ``prompts`` (messages), ``answers`` (schema, validation, re-ask),
``baselines`` (non-LLM rankers and fallbacks), ``generate`` (the incremental, resumable runner),
``evaluate`` (recall@k with bootstrap intervals) and ``sft`` (fine-tuning examples).
"""
