"""The classical reference: what a 2018 NLU engine (Snips NLU's recipe) does with the same rows.

- the tool: TF-IDF over word 1-2-grams and character 2-5-grams, then logistic regression, with
  no_tool as one more class;
- span arguments (free strings and numbers): a linear-chain CRF (sklearn-crfsuite) over BIO tags
  per argument name, trained where the gold value is found verbatim in the request, on token
  boundaries; the rest of those values are counted, not learned from;
- arguments with a finite domain (an enum, a boolean): one logistic regression per tool and
  argument over the same TF-IDF features, "left out" being one of its classes; other arguments
  (arrays, objects) are never predicted, and the report counts them;
- a call that the tool's schema rejects for a missing required argument becomes no_tool, the
  router's own contract ("no_tool when a required argument is missing").

Scored by the project's own metrics (`metrics.evaluate_predictions`, `evaluate.gold_of`), request by
request on one thread, so its numbers are of the same kind as a router's row in `toolroute bench`.

    python -m toolroute.bench.classical --train train.jsonl --data eval.jsonl [--tools T]
        [--per-label K --seed 13] [--limit N] --json OUT.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import pickle
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from toolroute.grammars import NO_TOOL, Catalogue, load_catalogue
from toolroute.runtime.files import atomic_write_text, file_sha256
from toolroute.runtime.resources import peak_rss_mb
from toolroute.train.examples import Example
from toolroute.train.formats import read_valid_examples
from toolroute.train.split import per_label

from .evaluate import gold_of, spread
from .measure import Measurement
from .metrics import Prediction, evaluate_predictions

ENGINE = "classical: TF-IDF + logistic regression (tool), CRF (span arguments)"
WARMUP = 2
ABSENT = "(left out)"
_TOKEN = re.compile(r"\w+|[^\w\s]")

ArgumentKind = Literal["span", "value", "none"]


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _shape(word: str) -> str:
    return re.sub(r"(.)\1+", r"\1\1", re.sub(r"\d", "d", re.sub(r"[a-z]", "x", re.sub(r"[A-Z]", "X", word))))


def token_features(tokens: Sequence[Token], index: int) -> dict[str, Any]:
    """The usual CRF features: the word, its shape and affixes, and its neighbours."""
    word = tokens[index].text
    features: dict[str, Any] = {
        "bias": 1.0,
        "lower": word.lower(),
        "shape": _shape(word),
        "prefix3": word[:3].lower(),
        "suffix3": word[-3:].lower(),
        "suffix2": word[-2:].lower(),
        "is_digit": word.isdigit(),
        "has_digit": any(c.isdigit() for c in word),
        "is_title": word.istitle(),
        "is_upper": word.isupper(),
    }
    for offset in (-2, -1, 1, 2):
        where = index + offset
        if 0 <= where < len(tokens):
            features[f"{offset}:lower"] = tokens[where].text.lower()
            features[f"{offset}:shape"] = _shape(tokens[where].text)
        else:
            features[f"{offset}:edge"] = True
    return features


def argument_kind(schema: dict[str, Any]) -> ArgumentKind:
    if "enum" in schema or schema.get("type") == "boolean":
        return "value"
    if schema.get("type") in ("string", "integer", "number"):
        return "span"
    return "none"


def _surface(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str | int | float):
        return str(value)
    return None


def bio_tags(tokens: Sequence[Token], request: str, spans: dict[str, Any]) -> tuple[list[str], list[str]]:
    """BIO tags for the argument values found verbatim on token boundaries; the names not found."""
    tags = ["O"] * len(tokens)
    starts = {t.start: i for i, t in enumerate(tokens)}
    ends = {t.end: i for i, t in enumerate(tokens)}
    missed = []
    for name, value in spans.items():
        text = _surface(value)
        where = request.find(text) if text else -1
        placed = False
        while where >= 0 and text:
            first, last = starts.get(where), ends.get(where + len(text))
            if first is not None and last is not None and all(tag == "O" for tag in tags[first : last + 1]):
                tags[first] = f"B-{name}"
                for i in range(first + 1, last + 1):
                    tags[i] = f"I-{name}"
                placed = True
                break
            where = request.find(text, where + 1)
        if not placed:
            missed.append(name)
    return tags, missed


def tagged_spans(tokens: Sequence[Token], request: str, tags: Sequence[str]) -> dict[str, str]:
    """The first span tagged for each argument name, as written in the request."""
    spans: dict[str, str] = {}
    current: str | None = None
    start = end = 0
    for token, tag in [*zip(tokens, tags, strict=True), (None, "O")]:
        name = tag[2:] if tag != "O" else None
        continues = tag.startswith("I-") and name == current
        if current is not None and not continues:
            spans.setdefault(current, request[start:end])
            current = None
        if name is not None and not continues and token is not None:
            current, start = name, token.start
        if current is not None and token is not None:
            end = token.end
    return spans


def _coerce(text: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else None
    if kind == "number":
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        return float(text) if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)", text) else None
    return text


class ArgumentUse(BaseModel):
    """How the reference handles one argument, counted over the training rows that give it."""

    kind: ArgumentKind
    training_values: int
    as_spans: int = 0  # span arguments: values found verbatim in the request (what the CRF learns from)


class _Constant:
    """A classifier for a label with one value only: scikit-learn refuses to fit those."""

    def __init__(self, label: str) -> None:
        self.label = label

    def predict(self, _features: Any) -> list[str]:
        return [self.label]


def _classifier(features: Any, labels: Sequence[str]) -> Any:
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2:
        return _Constant(labels[0])
    return LogisticRegression(C=10.0, max_iter=2000).fit(features, labels)


class ClassicalRouter:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.kinds = {
            (tool.name, name): argument_kind(schema)
            for tool in catalogue
            for name, schema in tool.properties.items()
        }
        self.vectorizer: Any = None
        self.tool_classifier: Any = None
        self.values: dict[tuple[str, str], Any] = {}
        self.crf: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # The catalogue travels as its JSON, as in a router file (its generated models do not pickle).
        return {**self.__dict__, "catalogue": self.catalogue.to_json()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(
            state, catalogue=Catalogue.from_json(state["catalogue"], where="classical model")
        )

    def fit(self, examples: Sequence[Example]) -> dict[str, ArgumentUse]:
        from threadpoolctl import threadpool_limits

        # One BLAS thread: these problems are small, and on a busy 2-core machine OpenBLAS's
        # spinning threads made the fit 18 s instead of 1 s.
        with threadpool_limits(1):
            return self._fit(examples)

    def _fit(self, examples: Sequence[Example]) -> dict[str, ArgumentUse]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import make_union
        from sklearn_crfsuite import CRF

        requests = [e.request for e in examples]
        self.vectorizer = make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        )
        features = self.vectorizer.fit_transform(requests)
        self.tool_classifier = _classifier(features, [e.target.tool for e in examples])

        use: dict[str, ArgumentUse] = {}
        sequences, tag_sequences = [], []
        for example in examples:
            tool, arguments = example.target.tool, example.target.arguments or {}
            if tool == NO_TOOL:
                continue
            spans = {k: v for k, v in arguments.items() if self.kinds.get((tool, k)) == "span"}
            tokens = tokenize(example.request)
            tags, missed = bio_tags(tokens, example.request, spans)
            for name in arguments:
                entry = use.setdefault(
                    f"{tool}.{name}",
                    ArgumentUse(kind=self.kinds.get((tool, name), "none"), training_values=0),
                )
                entry.training_values += 1
                entry.as_spans += name in spans and name not in missed
            if tokens:
                sequences.append([token_features(tokens, i) for i in range(len(tokens))])
                tag_sequences.append(tags)
        if any(tag != "O" for tags in tag_sequences for tag in tags):
            crf = CRF(algorithm="lbfgs", c1=0.1, c2=0.1, max_iterations=100, all_possible_transitions=True)
            self.crf = crf.fit(sequences, tag_sequences)

        for (tool, name), kind in self.kinds.items():
            rows = [i for i, e in enumerate(examples) if e.target.tool == tool]
            if kind != "value" or not rows:
                continue
            labels = [json.dumps((examples[i].target.arguments or {}).get(name, ABSENT)) for i in rows]
            self.values[(tool, name)] = _classifier(features[rows], labels)
        return dict(sorted(use.items()))

    def _arguments(self, tool: str, request: str, features: Any) -> dict[str, Any]:
        properties = self.catalogue.get(tool).properties
        arguments: dict[str, Any] = {}
        tokens = tokenize(request)
        if self.crf is not None and tokens:
            tags = self.crf.predict_single([token_features(tokens, i) for i in range(len(tokens))])
            for name, text in tagged_spans(tokens, request, tags).items():
                if self.kinds.get((tool, name)) == "span":
                    value = _coerce(text, properties[name])
                    if value is not None:
                        arguments[name] = value
        for (owner, name), classifier in self.values.items():
            if owner == tool:
                value = json.loads(classifier.predict(features)[0])
                if value != ABSENT:
                    arguments[name] = value
        return arguments

    def _validated(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
        """The arguments the schema accepts: rejected optional ones dropped; None if a required one fails."""
        model = self.catalogue.arguments_model(tool)
        required = set(self.catalogue.get(tool).required)
        for _ in range(len(arguments) + 1):
            try:
                model.model_validate(arguments)
                return arguments
            except ValidationError as exc:
                wrong = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
                if not wrong or wrong & required or not wrong & arguments.keys():
                    return None
                arguments = {k: v for k, v in arguments.items() if k not in wrong}
        return None

    def predict(self, request: str) -> Prediction:
        started = time.perf_counter()
        features = self.vectorizer.transform([request])
        tool = str(self.tool_classifier.predict(features)[0])
        arguments = (
            None if tool == NO_TOOL else self._validated(tool, self._arguments(tool, request, features))
        )
        latency = (time.perf_counter() - started) * 1000.0
        if arguments is None:
            return Prediction(kind="no_tool", raw=tool, latency_ms=latency)
        return Prediction(kind="call", tool=tool, arguments=arguments, latency_ms=latency)


class ClassicalResult(BaseModel):
    engine: str = ENGINE
    train: str
    train_rows: int
    per_label: int | None
    seed: int | None
    train_seconds: float
    arguments: dict[str, ArgumentUse]  # "tool.argument" -> how it is handled
    measurement: Measurement
    # The evaluation rows (absent in results written before they were recorded).
    data: str | None = None
    data_sha256: str | None = None


def run_classical(
    train: Path,
    data: Path,
    tools: str | None = None,
    *,
    k: int | None = None,
    seed: int = 13,
    limit: int | None = None,
) -> ClassicalResult:
    from threadpoolctl import threadpool_limits

    read = read_valid_examples(train, load_catalogue(tools) if tools else None)
    catalogue = read.catalogue
    assert catalogue is not None  # set from the rows when not given
    examples = per_label(read.examples, k, seed) if k else read.examples
    evaluated = spread(read_valid_examples(data, catalogue).examples, limit)

    # Imported before the clock starts: training time is the fit, not scikit-learn's import.
    for module in (
        "sklearn.feature_extraction.text",
        "sklearn.linear_model",
        "sklearn.pipeline",
        "sklearn_crfsuite",
    ):
        importlib.import_module(module)

    with threadpool_limits(1):  # one thread, as a router row is measured per request
        started = time.perf_counter()
        router = ClassicalRouter(catalogue)
        arguments = router.fit(examples)
        train_seconds = time.perf_counter() - started
        blob = pickle.dumps(router)
        started = time.perf_counter()
        router = pickle.loads(blob)
        load_s = time.perf_counter() - started
        for example in evaluated[:WARMUP]:
            router.predict(example.request)
        predictions = [router.predict(example.request) for example in evaluated]
    report = evaluate_predictions([gold_of(e) for e in evaluated], predictions, catalogue)
    measurement = Measurement(
        file=ENGINE,
        runner="classical",
        size_bytes=len(blob),
        load_s=round(load_s, 6),  # unpickling takes milliseconds
        peak_rss_mb=round(peak_rss_mb(), 1),
        threads=1,
        requests=len(evaluated),
        latency_ms_p50=report.latency_ms_p50,
        latency_ms_p95=report.latency_ms_p95,
        output_tokens_per_s=None,
        report=report,
    )
    return ClassicalResult(
        train=str(train),
        train_rows=len(examples),
        per_label=k,
        seed=seed if k else None,
        train_seconds=round(train_seconds, 2),
        arguments=arguments,
        measurement=measurement,
        data=str(data),
        data_sha256=file_sha256(data),
    )


def format_arguments(arguments: dict[str, ArgumentUse]) -> str:
    """One line per kind: what the reference learns from and what it leaves out."""
    kinds = Counter(use.kind for use in arguments.values())
    spans = [use for use in arguments.values() if use.kind == "span"]
    found = sum(use.as_spans for use in spans)
    total = sum(use.training_values for use in spans)
    left = {name: use.training_values for name, use in arguments.items() if use.kind == "none"}
    lines = [
        f"span arguments ({kinds['span']}): {found} of {total} training values found verbatim in the "
        f"request (CRF); {total - found} not spans, not learned from",
        f"finite-domain arguments (enum/boolean, {kinds['value']}): one logistic regression each",
    ]
    if left:
        lines.append(f"never predicted (not a span, no finite domain): {left}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.bench.classical", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tools")
    parser.add_argument("--per-label", type=int)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path, required=True, help="where the result goes")
    args = parser.parse_args(argv)
    result = run_classical(
        args.train, args.data, args.tools, k=args.per_label, seed=args.seed, limit=args.limit
    )
    atomic_write_text(args.json, result.model_dump_json(indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
