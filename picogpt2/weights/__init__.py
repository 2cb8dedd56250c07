"""A model's files, in and out: where models live (``locations``), OpenAI's
released sizes fetched (``releases``, over HTTP with ``fetch``), every file
format read and written (``formats``), the parameter schema they all map
onto (``params``), the vocabulary's files (``vocabulary``), the one way in
(``loading``) and the check of what is on disk (``verification``)."""
