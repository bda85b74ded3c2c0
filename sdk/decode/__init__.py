"""memreg.decode: memreg's own decoding on top of transformers' `generate`.

A composition decodes with transformers' `GenerationMixin.generate` (greedy, sampling, beams,
processors, streamers, output dicts). What transformers has no notion of lives here:
assisted    drafting where a memory (already a member) drafts and the mixture verifies, reusing the
            memory's log-probabilities; prompt lookup drafts verified by every member
options     the decoding options of that path, read as transformers reads them
"""
