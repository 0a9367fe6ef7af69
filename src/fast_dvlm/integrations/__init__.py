"""Glue to other systems: SGLang serving (`sglang`), lmms-eval (`lmms_eval`)."""
