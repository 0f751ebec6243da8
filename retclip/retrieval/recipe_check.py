"""Whether a feature database's rows were embedded the way a model embeds its retrieval keys.

The database manifest records the embedding recipe its builder used (model, weights and their
hash, resize rule, mean/std, padding, dense map, pooling); a model compares it with its own before
searching, so keys and rows live in one space by construction, not by luck.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

from .fingerprint import RECIPE_FIELDS, EmbeddingRecipe, describe_differences

if TYPE_CHECKING:
    from .database import FeatureDatabase

logger = logging.getLogger(__name__)

__all__ = ["check_database_recipe"]


def check_database_recipe(
    database: FeatureDatabase,
    recipe: EmbeddingRecipe,
    *,
    allow_mismatch: bool = False,
    fields: Sequence[str] = RECIPE_FIELDS,
) -> List[Tuple[str, Any, Any]]:
    """Refuse rows embedded another way than ``recipe``, naming every differing field.

    A database without a recorded recipe (built before recipes were) gets a warning saying
    what cannot be checked, and its encoder fingerprint is checked as before.
    ``allow_mismatch`` (MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH, for ablations) turns a refusal
    into a warning; a different embedding dimension is always an error.

    Returns:
        The differences found (field, model value, database value).
    """
    if database.recipe is None:
        logger.warning(
            "feature database %s records no embedding recipe (built before recipes were "
            "recorded): its resize, mean/std, padding, dense map, pooling and weights hash "
            "cannot be checked against the model's; rebuild it to have them checked", database.path,
        )
        if not allow_mismatch or recipe.embed_dim != database.embed_dim:
            database.check_encoder(recipe.fingerprint)
        return []
    diffs = recipe.differences(database.recipe, fields)
    if not diffs:
        return []
    message = (
        f"feature database {database.path} was embedded with another recipe than the model's: "
        f"{describe_differences(diffs)}"
    )
    if not allow_mismatch or recipe.embed_dim != database.recipe.embed_dim:
        raise ValueError(
            f"{message}. Rebuild it from the model's config (DATABASE_BUILD.MODEL_CONFIG), "
            "or set MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH True for an ablation"
        )
    logger.warning("%s (allowed by MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH)", message)
    return diffs
