"""Generated benchmark, question/SFT-target generation, readers of every layout, and their bad input."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewards import RewardMix
from rlad.completion import parse_completion
from rlad.config import paper_rewards
from rlad.data.questions import DEFECT_WORDS, make_questions, sft_target, think_claims
from rlad.data.readers import (
    DataError,
    dataset_format,
    load_pixel_mask,
    read_dataset,
    read_loco,
    read_mmad,
    read_mvtec,
    read_visa,
)
from rlad.data.render import CLASSES, DEFECT_COLOURS, DEFECT_SHAPES, DEFECTS, inject_defect, render_normal
from rlad.data.show import contact_sheet
from rlad.data.synth import SynthSpec, synthesize
from rlad.metrics import SUBTASKS, AnswerRecord, mmad_accuracy


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    mmad = synthesize(SynthSpec(images_per_class=14, references_per_class=2, size=96, seed=3), out, workers=1)
    return out, mmad


def copy_of(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth[0], root)
    return root


def test_layout_classes_defects_balance(synth):
    root, mmad = synth
    assert {p.name for p in root.iterdir() if p.is_dir()} == set(CLASSES)
    defects = {k.split("/")[2] for k in mmad}
    assert defects == {"good", *DEFECTS}
    n_good = sum(k.split("/")[2] == "good" for k in mmad)
    assert n_good == len(mmad) / 2
    for key, entry in mmad.items():
        assert (root / key).is_file()
        assert (entry["mask_path"] is None) == ("/good/" in key)
        if entry["mask_path"]:
            assert (root / entry["mask_path"]).is_file()
    assert all((root / c / "train" / "good" / "001.png").is_file() for c in CLASSES)


def test_generation_is_deterministic(tmp_path, synth):
    spec = SynthSpec(classes=("pill", "wood"), images_per_class=4, references_per_class=1, size=96, seed=3)
    synthesize(spec, tmp_path / "a", workers=1)
    synthesize(spec, tmp_path / "b", workers=2)
    for f in (tmp_path / "a").rglob("*.png"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    assert (tmp_path / "a/mmad.json").read_text() == (tmp_path / "b/mmad.json").read_text()
    synthesize(
        SynthSpec(classes=("pill",), images_per_class=2, references_per_class=1, size=96, seed=4), tmp_path / "c"
    )
    a = np.asarray(Image.open(tmp_path / "a/pill/test/good/000.png"))
    c = np.asarray(Image.open(tmp_path / "c/pill/test/good/000.png"))
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", list(DEFECTS))
def test_defect_changes_pixels_inside_its_mask(kind):
    rng = np.random.default_rng(0)
    obj = render_normal("metal_nut", rng, 128)
    image, defect = inject_defect(obj, kind, rng)
    change = np.abs(image - obj.image).sum(axis=2)
    assert defect.mask.sum() >= 6
    inside, outside = change[defect.mask].mean(), change[~defect.mask].mean()
    assert inside > 5 * outside, (inside, outside)  # the defect is where the mask says, not elsewhere


@pytest.mark.parametrize("kind", list(DEFECTS))
def test_visibility_thickens_defects_and_one_is_the_benchmark(kind):
    obj = render_normal("metal_nut", np.random.default_rng(5), 224)  # the demo's size: a line is 1-2 px wide
    plain, d1 = inject_defect(obj, kind, np.random.default_rng(7))
    same, d_same = inject_defect(obj, kind, np.random.default_rng(7), visibility=1.0)
    assert np.array_equal(plain, same) and np.array_equal(d1.mask, d_same.mask)  # 1.0 is the benchmark as it was
    sizes = {1.0: [], 2.0: []}
    for seed in range(6):
        for v, out in sizes.items():
            image, defect = inject_defect(obj, kind, np.random.default_rng(seed), visibility=v)
            change = np.abs(image - obj.image).sum(axis=2)
            assert change[defect.mask].mean() > 5 * change[~defect.mask].mean()  # still where its mask says
            out.append(defect.mask.sum())
    assert np.mean(sizes[2.0]) > 1.4 * np.mean(sizes[1.0]), sizes  # wider lines, larger blobs


def test_visibility_must_be_positive_and_is_part_of_the_cache_key():
    with pytest.raises(ValueError, match="visibility must be > 0, got 0"):
        SynthSpec(visibility=0)
    with pytest.raises(ValueError, match="visibility"):
        inject_defect(render_normal("pill", np.random.default_rng(0), 64), "hole", np.random.default_rng(0), -1.0)
    from rlad.config import load_config
    from rlad.data.sources import _synth_spec

    config = load_config(None, ["data.synth.visibility=2.5"])
    assert _synth_spec(config).visibility == 2.5  # a different benchmark, so a different cache entry


def test_the_cache_entry_changes_with_the_spec_and_the_generators_format(monkeypatch):
    from rlad.data import sources

    spec = SynthSpec(images_per_class=8)
    name = sources.synth_cache_name(spec)
    assert name == sources.synth_cache_name(SynthSpec(images_per_class=8)) and name.startswith("synth-")
    assert sources.synth_cache_name(SynthSpec(images_per_class=8, visibility=2.0)) != name
    monkeypatch.setattr(sources, "SYNTH_FORMAT", sources.SYNTH_FORMAT + 1)  # a generator that writes other files
    assert sources.synth_cache_name(spec) != name


def test_every_defect_colour_and_shape_drawn_is_in_the_description_vocabulary():
    obj = render_normal("pill", np.random.default_rng(0), 64)
    drawn = [inject_defect(obj, kind, np.random.default_rng(seed))[1] for kind in DEFECTS for seed in range(12)]
    assert {d.colour for d in drawn} <= set(DEFECT_COLOURS) and {d.shape for d in drawn} <= set(DEFECT_SHAPES)
    assert {"background", "blue", "yellow"} <= {d.colour for d in drawn}  # the three once missing from it


@pytest.mark.parametrize("fixed", [False, True])
def test_no_description_answer_stands_out_from_its_distractors(fixed):
    """Generator format 1 drew the distractors from 6 of the 9 defect colours: a missing part's ("background")
    and a blue or yellow stain's answer was the one option with its colour, and with fixed options always the
    last letter. Now any colour is a distractor's, and the right letter of each look moves around."""
    meta = {"class_name": "pill", "defect": "missing_part", "object_colour": "white", "region": "top",
            "colour": "background", "shape": "irregular", "size": "small"}  # fmt: skip
    letters, distractor_colours = set(), set()
    for seed in range(60):
        q = make_questions(meta, ["pill"], np.random.default_rng(seed), fixed_options=fixed)[-1]
        assert q["type"] == "Defect Description" and len(q["Options"]) == 4
        letters.add(q["Answer"])
        distractor_colours |= {text.split()[2] for letter, text in q["Options"].items() if letter != q["Answer"]}
    assert len(letters) >= 3 and "background" in distractor_colours


def test_an_answer_missing_from_its_candidates_is_refused():
    meta = {"class_name": "pill", "defect": "stain", "object_colour": "purple", "region": "top", "colour": "blue",
            "shape": "irregular", "size": "small"}  # fmt: skip
    with pytest.raises(ValueError, match="the answer 'purple' is not among the candidates"):
        make_questions(meta, ["pill"], np.random.default_rng(0))


def test_think_claims_read_back_what_the_sft_target_says(synth):
    samples, _ = read_mmad(synth[0] / "mmad.json", grid=8)
    checked = 0
    for s in samples:
        claims = think_claims(parse_completion(sft_target(s)).think)
        assert claims["answer_letter"] == s.answer and claims["answer_text"] == s.options[s.answer].rstrip(".")
        if s.anomalous:
            meta = s.extra["rlad_meta"]
            assert claims["region"] == meta["region"] and claims["kind"] == DEFECT_WORDS[s.defect]
            assert claims["look"] == f"a {meta['size']} {meta['colour']} {meta['shape']} mark"
            checked += 1
        else:
            assert not {"region", "kind", "look"} & set(claims)
    assert checked > 50


def test_small_defects_exist(synth):
    samples, _ = read_mvtec(synth[0], grid=24)
    sizes = [int(s.mask.sum()) for s in samples if s.anomalous]
    assert min(sizes) <= 2 and max(sizes) >= 10


def test_questions_are_valid_and_shuffled(synth):
    samples, report = read_mmad(synth[0] / "mmad.json", grid=8)
    assert report.read == len(samples) and not report.skipped
    subtasks = {s.subtask for s in samples}
    assert subtasks == set(SUBTASKS) - {"Defect Analysis"}
    assert all(s.answer in s.options for s in samples)
    assert len({s.answer for s in samples if len(s.options) == 4}) == 4  # the right letter moves around
    assert all(s.question.splitlines()[1].startswith("A. ") for s in samples)


def test_fixed_options_give_each_letter_one_meaning(tmp_path):
    spec = SynthSpec(classes=("pill", "wood"), images_per_class=12, references_per_class=1, size=64, fixed_options=True)
    synthesize(spec, tmp_path, workers=1)
    samples, _ = read_mmad(tmp_path / "mmad.json", grid=8)
    meaning: dict[tuple[str, str], set[str]] = {}
    for s in samples:
        if s.subtask == "Defect Description":  # 72 candidates: 4 of them, in the fixed order
            continue
        for letter, text in s.options.items():
            meaning.setdefault((s.question.splitlines()[0], letter), set()).add(text)
    assert all(len(texts) == 1 for texts in meaning.values())
    yes_no = next(s for s in samples if s.subtask == "Anomaly Discrimination")
    assert yes_no.options == {"A": "Yes.", "B": "No."}
    objects = next(s for s in samples if s.subtask == "Object Classification")
    assert objects.options == {"A": "pill", "B": "wood"}


def test_sft_targets_earn_full_reward(synth):
    samples, _ = read_mmad(synth[0] / "mmad.json", grid=24)
    targets = [sft_target(s) for s in samples]
    scores = RewardMix(paper_rewards()).score(targets, samples)
    assert scores.components["format"].min() == 1.0 and scores.components["answer"].min() == 1.0
    want = np.array([2.0 if s.mask.any() else 1.0 for s in samples])
    assert np.array_equal(scores.components["detection"], want)
    anomalous = next(t for t, s in zip(targets, samples, strict=True) if s.anomalous and s.defect == "crack")
    assert "crack" in anomalous and "patches in rows" in anomalous


@pytest.mark.parametrize("blocks", [["think", "answer"], ["seg", "answer"], ["answer"]])
def test_sft_targets_of_the_reasoning_ablations_hold_only_their_blocks(synth, blocks):
    samples, _ = read_mmad(synth[0] / "mmad.json", grid=24)
    targets = [sft_target(s, blocks) for s in samples]
    mix = RewardMix({"format": {"blocks": blocks}, "answer": {}})
    scores = mix.score(targets, samples)
    assert scores.components["format"].min() == 1.0 and scores.components["answer"].min() == 1.0
    assert all(parse_completion(t).layout == tuple(blocks) for t in targets)


def test_one_shot_references(synth):
    samples, _ = read_mmad(synth[0] / "mmad.json", grid=8, shots=1)
    assert all(s.reference and "/train/good/" in s.reference for s in samples)
    assert all(s.reference.split("/")[-4] == s.class_name for s in samples)


def test_dataset_format_is_detected(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    assert dataset_format(root) == "mmad" and dataset_format(root / "mmad.json") == "mmad"
    (root / "mmad.json").unlink()
    assert dataset_format(root) == "mvtec"
    assert len(read_dataset(root, grid=8)[0]) == len(read_mvtec(root, grid=8)[0])
    with pytest.raises(DataError, match=r"1-shot needs normal references"):
        read_dataset(root, grid=8, shots=1)
    with pytest.raises(DataError, match=r"dataset .*nowhere does not exist"):
        read_dataset(tmp_path / "nowhere")


def test_mvtec_reader_and_pixel_masks(synth):
    samples, _ = read_mvtec(synth[0], grid=8, classes=["pill"])
    assert {s.class_name for s in samples} == {"pill"} and len(samples) == 14
    for s in samples:
        pixels = load_pixel_mask(s)
        assert (pixels is not None) == s.anomalous
        assert s.answer == ("A" if s.anomalous else "B")
        if pixels is not None:
            assert pixels.shape == (96, 96) and s.mask.any()


def test_loco_reader_ors_several_masks(tmp_path):
    root = tmp_path / "loco"
    (root / "box/test/good").mkdir(parents=True)
    (root / "box/test/logical_anomalies").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "box/test/good/000.png")
    Image.new("RGB", (64, 64)).save(root / "box/test/logical_anomalies/000.png")
    mdir = root / "box/ground_truth/logical_anomalies/000"
    mdir.mkdir(parents=True)
    a, b = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    a[0:8, 0:8] = 255  # patch (0, 0) of an 8x8 grid
    b[56:64, 56:64] = 200  # patch (7, 7); LOCO masks use several grey values
    Image.fromarray(a).save(mdir / "000.png")
    Image.fromarray(b).save(mdir / "001.png")
    samples, _ = read_loco(root, grid=8)
    assert dataset_format(root) == "loco" and len(read_dataset(root, grid=8)[0]) == len(samples)
    ano = next(s for s in samples if s.anomalous)
    assert ano.mask.sum() == 2 and ano.mask[0, 0] and ano.mask[7, 7]
    assert load_pixel_mask(ano).sum() == 128


def write_visa(root, rows):
    (root / "split_csv").mkdir(parents=True)
    (root / "candle/Data/Images/Normal").mkdir(parents=True)
    (root / "candle/Data/Images/Anomaly").mkdir(parents=True)
    (root / "candle/Data/Masks/Anomaly").mkdir(parents=True)
    Image.new("RGB", (80, 64)).save(root / "candle/Data/Images/Normal/0000.JPG")
    Image.new("RGB", (80, 64)).save(root / "candle/Data/Images/Anomaly/000.JPG")
    m = np.zeros((64, 80), np.uint8)
    m[32:36, 40:44] = 255  # rows in patch 4 (8 px each), cols in patch 4 (10 px each)
    Image.fromarray(m).save(root / "candle/Data/Masks/Anomaly/000.png")
    lines = ["object,split,label,image,mask", *rows]
    (root / "split_csv/1cls.csv").write_text("\n".join(lines) + "\n")


def test_visa_raw_reader(tmp_path):
    root = tmp_path / "visa"
    write_visa(root, [
        "candle,test,normal,candle/Data/Images/Normal/0000.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,",
    ])  # fmt: skip
    samples, _ = read_visa(root, grid=8)
    assert dataset_format(root) == "visa" and len(read_dataset(root, grid=8)[0]) == 2
    assert len(samples) == 2 and [s.anomalous for s in samples] == [False, True]
    assert samples[1].mask.sum() == 1 and samples[1].class_name == "candle"


# ------------------------------------------------------------------------------------------ bad input


def test_missing_mask_file_is_named(synth, tmp_path, caplog):
    root = copy_of(synth, tmp_path)
    victim = root / "pill/ground_truth/crack/000_mask.png"
    victim.unlink()
    with pytest.raises(DataError, match=r"pill/test/crack/000.png: mask file .*000_mask.png does not exist"):
        read_mvtec(root, grid=8)
    with caplog.at_level(logging.WARNING):
        samples, report = read_mvtec(root, grid=8, on_bad="skip")
    assert len(report.skipped) == 1 and report.skipped[0][0] == "pill/test/crack/000.png"
    assert "skipped 1" in report.summary() and "skipped 1" in caplog.text
    assert len(samples) == 8 * 14 - 1


def test_corrupt_image_is_named(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    img = root / "wood/test/good/001.png"
    img.write_bytes(img.read_bytes()[:200])  # truncated PNG
    with pytest.raises(DataError, match=r"wood/test/good/001.png.* is unreadable"):
        read_mvtec(root, grid=8)
    (root / "wood/test/good/002.png").write_bytes(b"not an image at all")
    _, report = read_mvtec(root, grid=8, on_bad="skip")
    assert sorted(e for e, _ in report.skipped) == ["wood/test/good/001.png", "wood/test/good/002.png"]


def test_mask_of_the_wrong_size(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    Image.new("L", (50, 50)).save(root / "pill/ground_truth/hole/000_mask.png")
    with pytest.raises(DataError, match=r"mask .*000_mask.png is 50x50 but its image is 96x96"):
        read_mvtec(root, grid=8)


def edit_mmad(root, fn):
    path = root / "mmad.json"
    data = json.loads(path.read_text())
    key = next(k for k in data if "/crack/" in k)
    fn(data, key)
    path.write_text(json.dumps(data))
    return path, key


def test_mmad_entry_without_answer(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    path, key = edit_mmad(root, lambda d, k: d[k]["conversation"][1].pop("Answer"))
    with pytest.raises(DataError, match=rf"entry '{key}' question 1: missing field 'Answer'"):
        read_mmad(path, grid=8)
    _, report = read_mmad(path, grid=8, on_bad="skip")
    assert [e for e, _ in report.skipped] == [f"{path} entry {key!r}"]


def test_mmad_answer_not_among_options(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    path, _ = edit_mmad(root, lambda d, k: d[k]["conversation"][0].update(Answer="E"))
    with pytest.raises(DataError, match=r"question 0: answer 'E' is not among the options \['A', 'B'\]"):
        read_mmad(path, grid=8)


@pytest.mark.parametrize("bad_path", ["../../../../outside.png", "/etc/passwd"])
def test_mmad_path_outside_root(synth, tmp_path, bad_path):
    root = copy_of(synth, tmp_path)
    path, _ = edit_mmad(root, lambda d, k: d[k].update(mask_path=bad_path))
    with pytest.raises(DataError, match=rf"path '{bad_path}' leaves the dataset root"):
        read_mmad(path, grid=8)


def test_mmad_read_as_mmads_own_tools_read_it(synth, tmp_path):
    """MMAD's layout: keys ``<dataset>/<class>/test/<defect>/<file>``, mask paths relative to the key's first three
    parts and climbing with ``..`` (jam-cc/MMAD dataset/MMAD/generate_metadata.py); object questions typed
    "Object Structure" / "Object Details", scored as one "Object Analysis" (its helper/summary.py)."""
    src, _ = synth
    root = tmp_path / "MMAD"
    test = root / "MVTec-AD" / "pill" / "test"
    (test / "crack").mkdir(parents=True)
    (test / "good").mkdir(parents=True)
    (root / "MVTec-AD" / "pill" / "ground_truth" / "crack").mkdir(parents=True)
    shutil.copy(src / "pill/test/crack/000.png", test / "crack/000.png")
    shutil.copy(src / "pill/ground_truth/crack/000_mask.png", root / "MVTec-AD/pill/ground_truth/crack/000_mask.png")
    shutil.copy(src / "pill/test/good/000.png", test / "good/000.png")
    q = {"Question": "Is there any defect in the object?", "Options": {"A": "Yes.", "B": "No."}}
    structure = {"Question": "What shape is it?", "Options": {"A": "Round.", "B": "Square."}, "Answer": "A",
                 "type": "Object Structure"}  # fmt: skip
    details = {**structure, "Question": "What colour is it?", "type": "Object Details"}
    mmad = {
        "MVTec-AD/pill/test/crack/000.png": {
            "mask_path": "../ground_truth/crack/000_mask.png",
            "conversation": [{**q, "Answer": "A", "type": "Anomaly Detection"}, structure, details],
        },
        "MVTec-AD/pill/test/good/000.png": {"conversation": [{**q, "Answer": "B", "type": "Anomaly Detection"}]},
    }
    (root / "mmad.json").write_text(json.dumps(mmad))
    samples, report = read_mmad(root / "mmad.json", grid=8)
    assert not report.skipped and len(samples) == 4
    crack = samples[0]
    assert crack.anomalous and crack.mask.any()
    assert crack.extra["mask_paths"] == [str((root / "MVTec-AD/pill/ground_truth/crack/000_mask.png").resolve())]
    assert [s.subtask for s in samples] == ["Anomaly Discrimination", "Object Analysis", "Object Analysis",
                                            "Anomaly Discrimination"]  # fmt: skip
    # MMAD's scorer: "Anomaly Detection" is the mean of the accuracy on normal (0/1) and anomalous (1/1) images,
    # and the two object subtasks are one: 1 right of 2 -> 0.5 (as two subtasks they would be 1.0 and 0.0).
    answers = [AnswerRecord(s.subtask, p, s.answer, s.anomalous) for s, p in zip(samples, "AABA", strict=True)]
    acc = mmad_accuracy(answers)
    assert set(acc) == {"Anomaly Discrimination", "Object Analysis", "mean"}
    assert acc["Anomaly Discrimination"]["accuracy"] == 0.5 and acc["Object Analysis"] == {"accuracy": 0.5, "n": 2.0}
    # a climb that leaves the root is still refused, naming the path
    mmad["MVTec-AD/pill/test/crack/000.png"]["mask_path"] = "../../../../secret.png"
    (root / "mmad.json").write_text(json.dumps(mmad))
    with pytest.raises(DataError, match=r"path '../../../../secret.png' leaves the dataset root"):
        read_mmad(root / "mmad.json", grid=8)


def test_visa_path_outside_root(tmp_path):
    root = tmp_path / "visa"
    write_visa(root, ["candle,test,normal,../../secret.JPG,"])
    with pytest.raises(DataError, match=r"1cls.csv:2: path '../../secret.JPG' leaves the dataset root"):
        read_visa(root, grid=8)


def test_empty_or_missing_datasets(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        read_mvtec(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folder"):
        read_mvtec(tmp_path / "empty")
    (tmp_path / "mmad.json").write_text("{}")
    with pytest.raises(DataError, match="no samples could be read"):
        read_mmad(tmp_path / "mmad.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match=r"bad.json: not valid JSON"):
        read_mmad(tmp_path / "bad.json")


def test_contact_sheet(synth, tmp_path):
    samples, _ = read_mvtec(synth[0], grid=8, classes=["capsule"])
    out = contact_sheet(samples[:7], [load_pixel_mask(s) for s in samples[:7]], tmp_path / "s.png", tile=64, cols=4)
    assert Image.open(out).size == (4 * 64, 2 * (64 + 28))


def test_cli_data_synth_and_show(tmp_path, capsys):
    from rlad.cli import main

    main(["data", "synth", "--out", str(tmp_path / "d"), "--classes", "pill,pcb", "--per-class", "4", "--size", "64"])
    main(["data", "show", str(tmp_path / "d"), "--out", str(tmp_path / "sheet.png"), "--n", "6", "mask.grid=8"])
    out = capsys.readouterr().out
    assert "wrote 8 test images" in out and (tmp_path / "sheet.png").is_file()
    with pytest.raises(SystemExit):
        main(["data", "show", str(tmp_path / "nope")])
    assert "is not a folder" in capsys.readouterr().err


def test_the_benchmarks_cache_entries_kept_their_names_when_draws_came():
    from rlad.data import sources

    spec = SynthSpec(classes=("pill",), images_per_class=4, size=64, seed=3, visibility=2.0)
    assert sources.synth_cache_name(spec) == "synth-f759edf1a8a0"  # its name before SynthSpec.draw existed
    assert sources.synth_cache_name(SynthSpec(classes=("pill",), images_per_class=4, size=64, seed=3,
                                              visibility=2.0, draw=1)) != "synth-f759edf1a8a0"  # fmt: skip
    with pytest.raises(ValueError, match="draw must be >= 0, got -1"):
        SynthSpec(draw=-1)


def test_another_draw_is_the_same_benchmark_with_new_images(tmp_path):
    spec = SynthSpec(classes=("pill",), images_per_class=4, references_per_class=1, size=64, seed=3)
    first = synthesize(spec, tmp_path / "a", workers=1)
    again = synthesize(spec, tmp_path / "b", workers=1)
    other = synthesize(dataclasses.replace(spec, draw=1), tmp_path / "c", workers=1)
    assert first == again and sorted(other) == sorted(first)  # the same files, questions and answers' shape
    for rel in first:
        a, b, c = (np.asarray(Image.open(tmp_path / d / rel)) for d in "abc")
        assert np.array_equal(a, b) and not np.array_equal(a, c), rel  # every image drawn anew
        assert [q["type"] for q in other[rel]["conversation"]] == [q["type"] for q in first[rel]["conversation"]]
        assert other[rel]["rlad_meta"]["defect"] == first[rel]["rlad_meta"]["defect"]


def test_grpo_on_fresh_images_trains_on_another_draw_and_holds_out_the_same(tmp_path, monkeypatch):
    from rlad.config import ConfigError, load_config
    from rlad.data.sources import dataset_root, rl_samples

    monkeypatch.setenv("RLAD_CACHE", str(tmp_path))
    small = ["data.synth.images_per_class=6", "data.synth.classes=[pill]", "data.synth.size=64"]
    train, held_out = rl_samples(load_config("configs/demo.yaml", small))
    config = load_config("configs/demo.yaml", [*small, "data.grpo_fresh_images=true"])
    fresh, held_again = rl_samples(config)
    assert [s.sample_id for s in held_again] == [s.sample_id for s in held_out] and held_out
    assert all(s.sample_id.startswith("draw1/") for s in fresh)
    draw = dataset_root(config, draw=1)
    assert draw != dataset_root(config) and all(draw in Path(s.image).parents for s in fresh)
    # every question of every image of the other draw: as many as both splits of the first hold
    assert len(fresh) == len(train) + len(held_out)
    # (at 64 px the first scratch of this draw leaves no pixel of its mask: it is drawn again, not asked about)
    with pytest.raises(ConfigError, match=r"data\.grpo_fresh_images .* needs data\.root and data\.mmad unset"):
        load_config("configs/demo.yaml", [f"data.root={tmp_path}", "data.grpo_fresh_images=true"])
