"""A router's config (`router_config.json`) and the record of it in a manifest's metrics.

A router gives per-token mixture weights over [base, memories...] (`memreg.router`). Its weights are
a safetensors file beside this config; the config says what the weights are for: the features they
read, the number of members, and the base they were fitted for (tokenizer fingerprint and hidden
size), so that a router is refused for any other base before it runs. Light: pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# the names a package and a manifest use live in v1 (Metrics.router); re-exported here
from memreg.schemas.v1 import (DIGEST_PATTERN, FEATURES, ROUTER_CONFIG, ROUTER_FOLDER, ROUTER_WEIGHTS,  # noqa: F401
                               Feature, RouterRecord, _check_format)

ROUTER_FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouterBase(_Strict):
    """The base a router was fitted for: it applies to no other."""

    name: str = Field(description="base model name or path, as given when fitting (informative)")
    tokenizer: str = Field(pattern=DIGEST_PATTERN, description="the base tokenizer's fingerprint digest")
    hidden_size: int = Field(ge=1, description="the base's last hidden state size")


class RouterFit(_Strict):
    """How the router was fitted and what it measured on held-out text it never saw."""

    dataset: str = Field(description="what it was fitted on")
    tokens: int = Field(ge=0, description="tokens it was fitted on")
    held_out_tokens: int = Field(ge=0, description="tokens of held-out text it was measured on")
    perplexity_base: float = Field(gt=0, description="held-out perplexity of the base alone")
    perplexity_fixed: float = Field(gt=0, description="held-out perplexity at the EM-fitted fixed weights")
    perplexity_router: float = Field(gt=0, description="held-out perplexity with the router")
    fixed_weights: list[float] = Field(description="the EM-fitted fixed memory weights it is compared with")
    steps: int = Field(ge=0, description="optimiser steps kept (the best on a stopping split of the fitting text)")


class RouterConfig(_Strict):
    """`router_config.json`: a router's shape, features and binding to its base."""

    format_version: Literal[1] = ROUTER_FORMAT_VERSION
    kind: Literal["memreg-router"] = "memreg-router"
    features: list[Feature] = Field(min_length=1, description="what the router reads at each position")
    members: int = Field(ge=2, description="mixture members, the base included (the output size)")
    member_names: list[str] = Field(default_factory=list, description="the members it was fitted with (informative)")
    hidden_units: int = Field(ge=1, description="width of the router MLP's hidden layer")
    hidden_projection: int = Field(default=0, ge=0, description="width each member's hidden state is projected to")
    hidden_sizes: list[int] = Field(description="each member's last hidden state size, base first")
    base: RouterBase
    threshold: float | None = Field(default=None, ge=0, lt=1,
                                    description="a token whose memories' total weight is below this goes to the base alone")
    floor: float = Field(default=1e-6, ge=0, description="each member's least weight before the threshold (no log 0)")
    weights_file: str = Field(default=ROUTER_WEIGHTS, pattern=r"^[A-Za-z0-9._-]+\.safetensors$")
    memreg_version: str | None = None
    fit: RouterFit | None = None

    _check = model_validator(mode="before")(_check_format)

    @field_validator("features")
    @classmethod
    def _unique(cls, features: list[str]) -> list[str]:
        if len(set(features)) != len(features):
            raise ValueError(f"features {features} name one twice")
        return features

    @model_validator(mode="after")
    def _consistent(self) -> "RouterConfig":
        if len(self.hidden_sizes) != self.members:
            raise ValueError(f"{len(self.hidden_sizes)} hidden sizes for {self.members} members: give one per member, base first")
        if self.hidden_sizes[0] != self.base.hidden_size:
            raise ValueError(f"hidden_sizes[0] = {self.hidden_sizes[0]} but the base's hidden size is {self.base.hidden_size}")
        if "hidden" in self.features and self.hidden_projection < 1:
            raise ValueError("the hidden feature needs hidden_projection >= 1")
        if self.floor * self.members >= 1:
            raise ValueError(f"floor {self.floor} x {self.members} members leaves nothing to route")
        return self
