"""Drop-in modules for code written against the peers: change the import line, keep the code.

- ``from torchclip.compat import openai as clip`` for openai/CLIP's ``clip`` (``available_models``, ``load``,
  ``tokenize``; the model's call returns ``(logits_per_image, logits_per_text)``);
- ``from torchclip.compat import open_clip`` for OpenCLIP's ``open_clip`` (``create_model_and_transforms``,
  ``create_model_from_pretrained``, ``create_model``, ``get_tokenizer``, ``list_models``,
  ``list_pretrained``, ``tokenize``; the model's call returns what OpenCLIP's does).

The models are torchclip's (same weights, same fast inference); only their call signature follows the peer.
"""
