"""experiment=reasoning (conf/experiment/reasoning.yaml, conf/reasoning_arm/): the arms compose as
documented, and the teacher artefact each (fold, seed) builds carries the rationales and, per
perspective, the teacher's states over its rationale."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.fixtures.artefacts import make_artefact, rationale_text

PERSPECTIVES = ["user_intent", "structured_analysis", "business_rules"]


def test_the_arms_compose_as_documented(make_cfg):
    arms = {}
    for name in ("ordinal", "crsd", "latent", "full"):
        cfg = make_cfg("experiment=reasoning", f"reasoning_arm={name}", "data.split.fold=2", "seed=3")
        assert cfg.data.annotations.endswith("artefacts/chorus_icecat/reasoning/f2_s3")
        assert cfg.data.split.folds == 5 and cfg.data.annotation_superset
        assert cfg.teacher_artefact.latent == "rationale" and cfg.teacher_artefact.rationales
        arms[name] = (sorted(instantiate(cfg.loss).active_terms), cfg.extractor._target_.rsplit(".", 1)[-1])
    assert arms == {"ordinal": (["ce", "ordinal"], "NoExtractor"), "crsd": (["ce", "crsd"], "NoExtractor"),
                    "latent": (["ce", "latent"], "MLPExtractor"),
                    "full": (["ce", "crsd", "kd", "latent"], "MLPExtractor")}


@pytest.fixture
def reads_and_data(make_cfg, tmp_path):
    """A fold's data module, and fixture teacher reads: the judgement reading of every pair, and
    rationales (written with the perspectives in another order) for 30 % of them."""
    cfg = make_cfg("data.split.folds=5", "data.split.fold=1")
    dm = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    dm.setup("fit")
    reads = tmp_path / "reads"
    make_artefact(dm.frame, reads / "worker-000", perspectives=("decision",), vector_dim=8, label_names=("yes", "no"))
    make_artefact(dm.frame, reads / "rationales" / "worker-000", perspectives=PERSPECTIVES[::-1], vector_dim=8,
                  label_names=list(dm.label_set.names), annotate_fraction=0.3, seed=5)
    return dm, reads


def _artefact(dm, reads, out, **options):
    from lrkd.artefact import load_artefact
    from lrkd.teacher.label.head_artefact import write_head_artefact

    write_head_artefact(dm, out, reads_dir=reads, perspectives=PERSPECTIVES, teacher="fixture", seed=1, **options)
    return load_artefact(out)


def _keys(art) -> list[tuple[str, str]]:
    return list(zip(map(str, art.query_ids), map(str, art.item_ids)))


def test_the_reasoning_artefact_holds_each_perspectives_rationale_states(reads_and_data, tmp_path):
    from lrkd.artefact import load_artefact

    dm, reads = reads_and_data
    written = load_artefact(reads / "rationales" / "worker-000")
    states = {k: written.latents[i] for i, k in enumerate(_keys(written))}
    art = _artefact(dm, reads, tmp_path / "raw", latent="rationale", latent_dim=None)
    assert sorted(_keys(art)) == sorted(states)  # only the pairs with rationales
    assert art.manifest.extra["latent"] == "rationale_states"
    for i, (q, item) in enumerate(_keys(art)):
        # the rationales were written in the reverse perspective order: the artefact follows the job's
        np.testing.assert_array_equal(art.latents[i], states[(q, item)][::-1])
        assert [art.rationales[p][i] for p in PERSPECTIVES] == [rationale_text(p, q, item) for p in PERSPECTIVES]
    np.testing.assert_allclose(art.soft_labels.sum(axis=1), 1.0, atol=1e-3)  # the head's soft labels
    small = _artefact(dm, reads, tmp_path / "pca", latent="rationale", latent_dim=4)
    assert small.latents.shape == (len(art), 3, 4)
    assert np.abs(small.latents[:, 0] - small.latents[:, 1]).max() > 0.1  # one PCA, perspectives stay apart


def test_rationales_ride_along_with_the_decision_state(reads_and_data, tmp_path):
    dm, reads = reads_and_data
    art = _artefact(dm, reads, tmp_path / "decision", rationales=True, latent="decision", latent_dim=None)
    assert len(art) == len(dm.frame)  # every pair read
    with_text = [i for i in range(len(art)) if art.rationales["user_intent"][i]]
    assert 0.25 * len(art) < len(with_text) < 0.35 * len(art)
    np.testing.assert_array_equal(art.latents[:, 0], art.latents[:, 2])  # the decision state, every perspective


def test_missing_rationales_stop_with_an_error_naming_the_folder(reads_and_data, tmp_path):
    dm, reads = reads_and_data
    with pytest.raises(ValueError, match="no perspective"):
        from lrkd.teacher.label.head_artefact import write_head_artefact
        write_head_artefact(dm, tmp_path / "x", reads_dir=reads, perspectives=["user_intent", "price"], teacher="t",
                            latent="rationale")
    empty = tmp_path / "judgement_only"
    Path(empty).mkdir()
    (empty / "worker-000").symlink_to(reads / "worker-000", target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="rationales"):
        _artefact(dm, empty, tmp_path / "y", rationales=True)


def test_the_perspectives_study_builds_one_artefact_per_perspective_set(make_cfg):
    one = make_cfg("experiment=perspectives", "perspective=[business_rules]", "data.split.fold=4", "seed=2")
    assert one.data.annotations.endswith("artefacts/chorus_icecat/perspectives/f4_s2_business_rules")
    assert list(one.perspectives) == ["business_rules"] and one.teacher_artefact.latent == "rationale"
    assert sorted(instantiate(one.loss).active_terms) == ["ce", "crsd", "kd", "latent"]
    every = make_cfg("experiment=perspectives", "data.split.fold=0", "seed=1")
    assert every.data.annotations.endswith("f0_s1_user_intent+structured_analysis+business_rules")


def test_a_perspective_subset_artefact_holds_those_perspectives_only(reads_and_data, tmp_path):
    from lrkd.artefact import load_artefact
    from lrkd.teacher.label.head_artefact import write_head_artefact

    dm, reads = reads_and_data
    written = load_artefact(reads / "rationales" / "worker-000")
    states = {k: written.latents[i] for i, k in enumerate(_keys(written))}
    write_head_artefact(dm, tmp_path / "one", reads_dir=reads, perspectives=["structured_analysis"], teacher="t",
                        seed=1, latent="rationale", latent_dim=None)
    art = load_artefact(tmp_path / "one")
    assert art.perspectives == ("structured_analysis",) and art.latents.shape[1] == 1
    k = _keys(art)[0]
    np.testing.assert_array_equal(art.latents[0, 0], states[k][1])  # written order: business, structured, user


def test_latent_targets_share_one_pca_across_perspectives():
    from lrkd.teacher.label.latents import project_latents

    rng = np.random.default_rng(0)
    states = rng.standard_normal((40, 3, 6))
    targets, info = project_latents(states, 3, 2)
    assert targets.shape == (40, 3, 2) and info["dim"] == 2
    flat = targets.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)  # one projection fitted on all 120 states
    assert np.var(flat, axis=0, ddof=1).mean() == pytest.approx(1.0, rel=1e-4)  # unit mean variance
    shared, _ = project_latents(states[:, :1], 3, None)  # one state for every perspective, no PCA
    np.testing.assert_array_equal(shared[:, 2], states[:, 0].astype(np.float32))
    with pytest.raises(ValueError, match="want 1 or 3"):
        project_latents(states[:, :2], 3, 2)
