"""``mask_form="auto"``: which :data:`~sparse_rt.ingest.forms.FORM_TABLE` form a checkpoint is in."""

from __future__ import annotations

import re
from typing import Mapping

import torch

from .errors import AmbiguousFormError, UnknownLayoutError
from .forms import FORM_TABLE, FORMS, CheckpointContents
from .loading import key_families

__all__ = ["detect_forms", "choose_form"]

_SUSPICIOUS = re.compile(r"(mask|^scores?$)", re.IGNORECASE)


def detect_forms(contents: CheckpointContents) -> list[str]:
    """Every form whose keys appear, in ``detect_rank`` order."""
    found = [form for form in FORM_TABLE if form.detect is not None and form.detect(contents)]
    return [form.name for form in sorted(found, key=lambda form: form.detect_rank)]


def choose_form(contents: CheckpointContents, user_masks_given: bool) -> str:
    """The one detected form; with none, ``explicit`` when ``masks=`` is given, else ``dense_zeros``."""
    found = detect_forms(contents)
    if len(found) > 1:
        raise _several_forms_error(contents, found)
    if found:
        return found[0]
    suspicious = _suspicious_keys(contents.state_dict)
    if suspicious and not user_masks_given:
        raise _unknown_layout_error(contents, suspicious)
    return "explicit" if user_masks_given else "dense_zeros"


def _several_forms_error(contents: CheckpointContents, found: list[str]) -> AmbiguousFormError:
    if contents.side_masks is not None:
        # the folder layout already says open_lth: name what else the weights file holds
        others = [name for name in found if name != "open_lth"]
        return AmbiguousFormError(
            f"{contents.source}: has mask.pth beside it (OpenLTH) but also keys of {others}; pass mask_form="
        )
    return AmbiguousFormError(
        f"{contents.source}: keys of several mask forms found: {found}. Pass mask_form= one of them. "
        f"Key families seen: {key_families(contents.state_dict)}"
    )


def _suspicious_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys that look like masks/scores of a form we do not know."""
    return [key for key in state_dict if _SUSPICIOUS.search(key.rsplit(".", 1)[-1])]


def _unknown_layout_error(contents: CheckpointContents, suspicious: list[str]) -> UnknownLayoutError:
    return UnknownLayoutError(
        f"{contents.source}: unknown mask layout — keys that look like masks or scores but match no known form: "
        f"{suspicious[:10]}{' ...' if len(suspicious) > 10 else ''}. "
        f"Key families seen: {key_families(contents.state_dict)}. "
        f"Known forms: {', '.join(FORMS)}. Pass mask_form= to force one, masks= to give the masks "
        "explicitly, or mask_form='dense_zeros' to ignore these keys' meaning."
    )
