"""Scoring text under GPT-2: log-likelihood and perplexity of a text with
transformers' sliding window (``perplexity``), and of a whole corpus on
local workers or a Dask cluster (``corpus``)."""
