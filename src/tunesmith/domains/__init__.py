"""Domain packs (legal, medical, finance, support): compliance profiles, task templates,
safety probes and bias swaps, declared as data; plus document ingestion and grounded
question-answer pairs. The code that runs a pack's probes lives in ``evaluate/``."""
