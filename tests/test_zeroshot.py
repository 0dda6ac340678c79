import csv

import numpy as np
import pytest
import torch
from PIL import Image

from mmrad.cli import main
from mmrad.config.prompts import load_prompt_bank
from mmrad.inference.feature_cache import TextEmbeddingCache
from mmrad.inference.zeroshot import ZeroShotClassifier, query_prompts, run_zero_shot


def test_query_prompts_bank_templates_and_negated_queries():
    bank = load_prompt_bank("chexpert")
    assert query_prompts("pleural effusion", bank) == bank.prompts("Pleural Effusion")
    free = query_prompts("left apical pneumothorax", bank)
    assert "there is left apical pneumothorax" in free.positive and "no left apical pneumothorax" in free.negative
    negated = query_prompts("No acute disease", bank)
    assert negated.positive == ["No acute disease"] and negated.negative == ["acute disease"]


def test_text_cache_hits_on_repeated_queries_and_follows_weights(tiny_model, tmp_path):
    cache = TextEmbeddingCache(tiny_model, tmp_path / "cache")
    first = cache(["pleural effusion", "pneumothorax"])
    assert cache.computed == 2 and first.shape == (2, tiny_model.config.projection_dim)
    again = cache(["pneumothorax", "pleural effusion"])
    assert cache.computed == 2  # a repeated query set costs no text forward
    torch.testing.assert_close(again[0], first[1])
    cache(["pneumothorax", "cardiomegaly"])
    assert cache.computed == 3  # only the new text
    other = TextEmbeddingCache(tiny_model, tmp_path / "cache")  # a new run: read from disk
    torch.testing.assert_close(other(["pleural effusion"])[0], first[0])
    assert other.computed == 0
    with torch.no_grad():
        tiny_model.text_proj.weight.mul_(2.0)  # new weights: a new key, nothing reused
    cache(["pleural effusion"])
    assert cache.computed == 4


def test_scorers(tiny_model, batch):
    pixels = batch["pixel_values"]
    fusion = ZeroShotClassifier(tiny_model, "fusion").score(pixels, ["pleural effusion", "pneumothorax"])
    logits, _ = tiny_model.score_queries(pixels, tiny_model.embed_texts(["pleural effusion"]))
    assert fusion.shape == (4, 2) and ((fusion > 0) & (fusion < 1)).all()
    pairwise = ZeroShotClassifier(tiny_model, "contrastive").score(pixels, ["pneumothorax"])
    assert pairwise.shape == (4, 1) and ((pairwise > 0) & (pairwise < 1)).all()
    classes = ZeroShotClassifier(tiny_model, "contrastive", mode="classes").score(pixels, ["edema", "pneumothorax"])
    torch.testing.assert_close(classes.sum(-1), torch.ones(4))
    # a single positive phrasing through the fusion scorer is exactly the decoder's presence probability
    single = ZeroShotClassifier(tiny_model, "fusion", prompts=_one_phrase_bank())
    torch.testing.assert_close(single.score(pixels, ["Pleural Effusion"])[:, 0], torch.sigmoid(logits[:, 0]))


def _one_phrase_bank():
    from mmrad.config.prompts import prompt_bank_from_dict

    return prompt_bank_from_dict(
        {"findings": {"Pleural Effusion": {"templates": False, "positive": ["pleural effusion"], "negative": ["x"]}}}
    )


def test_run_on_a_folder_keeps_unreadable_files_as_rows(tiny_model, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    result = run_zero_shot(tiny_model, [folder], ["pneumothorax", "cardiomegaly"], batch_size=2, progress=False)
    assert len(result.ids) == 4 and result.probs.shape == (4, 2)
    broken = result.ids.index(str(folder / "broken.png"))
    assert np.isnan(result.probs[broken]).all() and "not an image" in result.errors[str(folder / "broken.png")]
    ok = np.delete(result.probs, broken, axis=0)
    assert ((ok > 0) & (ok < 1)).all()


def test_zero_shot_cli_on_a_corpus(tiny_model, phantom_corpus, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    out = tmp_path / "results.csv"
    argv = ["zero-shot", str(model_dir), str(phantom_corpus), "--queries", "pleural effusion", "no acute disease"]
    assert main([*argv, "--scorer", "contrastive", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["image", "pleural effusion", "no acute disease", "error"]
    assert rows[0]["image"] == "test:0" and 0 < float(rows[0]["pleural effusion"]) < 1
    assert "wrote" in capsys.readouterr().out
    assert main(["zero-shot", str(model_dir), str(tmp_path / "missing"), "--queries", "x", "--out", str(out)]) == 1


@pytest.mark.parametrize("scorer", ["fusion", "contrastive"])
def test_scores_do_not_depend_on_the_batch(tiny_model, batch, scorer):
    clf = ZeroShotClassifier(tiny_model, scorer)
    whole = clf.score(batch["pixel_values"], ["edema"])
    part = clf.score(batch["pixel_values"][2:], ["edema"])
    torch.testing.assert_close(whole[2:], part, atol=1e-5, rtol=1e-4)


def _image_folder(root, names=("a.png", "sub/b.png", "c.jpg", "d.png", "e.png")):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(root / name)
    return root


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("scorer", ["contrastive", "fusion"])
def test_image_cache_skips_the_image_tower_and_changes_no_result(tiny_model, tmp_path, scorer):
    folder = _image_folder(tmp_path / "DOE^JOHN")  # a patient-named folder
    (folder / "broken.png").write_bytes(b"not a png")
    cache = tmp_path / "image-cache"
    vision = _count_calls(tiny_model.vision)

    def run(queries, **kwargs):
        return run_zero_shot(tiny_model, [folder], queries, scorer=scorer, batch_size=2, progress=False, **kwargs)

    plain = run(["edema", "pneumothorax"])
    assert len(vision) == 3  # 5 readable images in batches of 2
    first = run(["edema", "pneumothorax"], cache_images=cache)
    np.testing.assert_allclose(first.probs, plain.probs, rtol=0, atol=1e-6)
    assert first.errors == plain.errors and len(vision) == 6
    names = [p.name for p in cache.rglob("*")]
    assert len([n for n in names if n.endswith(".safetensors")]) == 5 and not any("DOE" in n for n in names)
    vision.clear()
    second = run(["cardiomegaly", "edema"], cache_images=cache)  # a new query set over the same images
    assert len(vision) == 0, "the image tower ran although every image was cached"
    np.testing.assert_allclose(second.probs, run(["cardiomegaly", "edema"]).probs, rtol=0, atol=1e-6)
    assert second.errors == plain.errors
    vision.clear()
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(folder / "a.png")  # a changed file is recomputed
    run(["edema"], cache_images=cache)
    assert len(vision) == 1
    with torch.no_grad():
        tiny_model.image_proj.weight.mul_(2.0)  # new weights: nothing reused
    run(["edema"], cache_images=cache)
    assert len(vision) == 4


@pytest.mark.usefixtures("single_thread")
def test_image_cache_on_corpus_rows(tiny_model, phantom_corpus, tmp_path):
    vision = _count_calls(tiny_model.vision)
    kwargs = {"scorer": "contrastive", "progress": False, "cache_images": tmp_path / "cache"}
    first = run_zero_shot(tiny_model, [phantom_corpus], ["edema"], **kwargs)
    calls = len(vision)
    second = run_zero_shot(tiny_model, [phantom_corpus], ["edema"], **kwargs)
    assert calls > 0 and len(vision) == calls
    np.testing.assert_array_equal(second.probs, first.probs)


@pytest.mark.usefixtures("single_thread")
def test_a_repeated_query_set_costs_no_text_forward(tiny_model, tmp_path):
    folder = _image_folder(tmp_path / "images", ("a.png", "b.png"))
    text = _count_calls(tiny_model.text)
    clf = ZeroShotClassifier(tiny_model, "contrastive")
    pixels = torch.randn(2, 3, 32, 32)
    first = clf.score(pixels, ["edema", "pneumothorax"])
    calls = len(text)
    again = clf.score(pixels, ["pneumothorax", "edema"])
    assert calls > 0 and len(text) == calls
    torch.testing.assert_close(again, first.flip(-1))
    run_zero_shot(tiny_model, [folder], ["edema"], scorer="contrastive", cache_dir=tmp_path / "t", progress=False)
    calls = len(text)
    run_zero_shot(tiny_model, [folder], ["edema"], scorer="contrastive", cache_dir=tmp_path / "t", progress=False)
    assert len(text) == calls  # a new run reads the query embeddings from disk
