"""Every checkpoint format the project reads or writes, and the only code that opens one.

Formats, each with its read and write (or convert) side by side: :mod:`.hubert` (s3prl's
converted HuBERT), :mod:`.wavlm` (s3prl's WavLM dict), :mod:`.fairseq` (fairseq HuBERT),
:mod:`.transformers_dirs` (transformers HubertModel / WavLMModel directories), with the name
tables between s3prl and transformers in :mod:`.renaming`. Beneath them :mod:`.safeload`
(unpickling that runs no code a file names) and :mod:`.download` (fetching into s3prl's cache).
Above them :mod:`.bases` (a spec -> a checked base state) and :mod:`.models` (either
architecture: which one, build it, read a file of it).
"""

from .bases import check_base, load_base_state
from .models import base_architecture, build_base, read_checkpoint

__all__ = ["base_architecture", "build_base", "check_base", "load_base_state", "read_checkpoint"]
