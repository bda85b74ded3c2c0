"""memreg.core: the bottom layer every other layer imports — the one error tree (`errors`), where
things live (`settings`), atomic writes and streaming digests (`fsutil`), and the lazy loader of the
packages' public names (`lazy`). Standard library only: never imports torch, transformers or pydantic."""
