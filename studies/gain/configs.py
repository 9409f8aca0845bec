"""The configurations the gain study compares: a variant and ``--set`` overrides of the run's preset.

Every configuration is an ordinary training run (``python -m train --variant V --set ...``); the ones
"beyond the paper" are recipe switches (``dsa.config.Recipe``), and ``dsa-oracle`` / ``dsa-csa`` read
another store (ground-truth DSAP, coarse part crops).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudyConfig:
    variant: str
    overrides: tuple[str, ...] = ()
    tag: str | None = None        # another store than the study's --tag
    input: str | None = None      # another DSAG input kind (csa)
    note: str = ""
    labels: tuple[str, ...] = field(default=())


CONFIGS: dict[str, StudyConfig] = {
    "two-branch": StudyConfig("two-branch", note="the MF-Stream alone (the baseline)"),
    "baseline": StudyConfig("baseline", note="global branch only (Table 3)"),
    "dsa": StudyConfig("dsa", note="the preset's DSA-reID recipe"),
    "dsa-global": StudyConfig("dsa-global"),
    "dsa-local": StudyConfig("dsa-local"),
    "dsa-concat": StudyConfig("dsa-concat", note="concatenation + FC fusion (Table 5)"),
    "two-branch-sum": StudyConfig("two-branch", ("recipe.part_id_reduction=sum",), note="8 part ID terms summed"),
    "two-branch-mean": StudyConfig("two-branch", ("recipe.part_id_reduction=mean",), note="8 part ID terms averaged"),
    "dsa-sum": StudyConfig("dsa", ("recipe.part_id_reduction=sum",), note="8 part ID terms summed (the paper's text)"),
    "dsa-mean": StudyConfig("dsa", ("recipe.part_id_reduction=mean",), note="8 part ID terms averaged"),
    "dsa-noflip": StudyConfig("dsa", ("recipe.dsap_flip=false",), note="DSAP images never mirrored with the image"),
    "dsa-drop-d-noflip": StudyConfig("dsa", ("recipe.drop_d=0.5", "recipe.dsap_flip=false")),
    "dsa-direct-f": StudyConfig("dsa", ("recipe.w_id_mf=1.5", "recipe.w_triplet_mf=1.5"), note="beyond the paper"),
    "dsa-drop-d": StudyConfig("dsa", ("recipe.drop_d=0.5",), note="beyond the paper: d left out in half of the steps"),
    "dsa-distill": StudyConfig("dsa", ("recipe.w_distill=1.0",), note="beyond the paper"),
    "dsa-dsag-first": StudyConfig("dsa", ("recipe.dsag_first_epochs=5",), note="beyond the paper"),
    "dsa-oracle": StudyConfig("dsa", tag="clean16", note="ground-truth DSAP (the synthetic set only)"),
    "dsa-csa": StudyConfig("dsa", tag="csa16", input="csa", note="coarse part crops (Table 4)"),
}
