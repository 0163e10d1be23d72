"""How sure the router is of its tool: a probability for every name at the decision point.

Every canonical output starts with `{"tool":"`; the tokens right after it pick the tool. The
probability of a name (a catalogue tool or `no_tool`) is the probability that the grammar-
constrained sampler writes that name next, whatever the spelling, where each step's distribution
is the model's softmax over the tokens the grammar allows there (what the constrained decoder
itself chooses from; greedy decoding takes its argmax):

    P(name) = sum over the allowed tokens t whose text leads only to `name` of p(t)
            + sum over the tokens whose text is still ambiguous of p(t) * P(name | t)

At the decision point the model's logits are already there (the greedy step needs them), and a
token's text usually settles the name at once: `track` can only go on to `track_order` (the
grammar allows nothing else), so the customer-support router's confidence costs no decode at all.
Only a token shared by several names (`get_` for `get_time` and `get_weather`, or `track` when
both `track` and `track_order` exist, the closing quote telling them apart) is teacher-forced:
each level of such tokens is one llama.cpp batch, one sequence per token, branching from the
request's sequence in the unified KV cache. Tokens below `MIN_EXPANDED` probability, and beyond
the `MAX_BRANCHES` most probable of a level, are not followed; the names' probabilities are
normalised over what was followed (the mass left out is reported as `pruned`).

With name pruning (`Router.load(name_pruning=True)`), the least probable ambiguous tokens of a
level are not followed either, as long as all the mass so left out, over every level, stays
within `NAME_MASS` times the mass already settled on names: the widest batches shrink to the
tokens that matter (a trained router, with its mass on one name, follows a few), and every
probability moves by at most `NAME_MASS` from what the scorer gives without pruning. (Proof: with
D the mass left out and S' the mass that ends on names, each name's share moves by at most
D / S', and D <= NAME_MASS * S' since the settled mass only grows.) That bound is in exact
arithmetic. llama.cpp evaluates a branch's token with a
different result when the batch around it holds other branches (other sequences, other KV
cells): on the untuned 8-tool HWU64 router a 5-token branch's top logit moved by up to 0.2 with
or without pruning's fewer branches, against a one-at-a-time evaluation, so the unpruned
scorer's own values already carry that much arithmetic; with pruning the names' shares moved by
up to 9e-4 with no_tool allowed and 8.8e-3 with a call required (12 requests). `NAME_TOLERANCE`
(1e-2) is the stated tolerance the parity test holds the results to. The call score is not
touched (it is read from the chosen tokens, not from here).

With a focus (`Router.load(name_focus=True)`, the default), the scorer runs once the greedy
decoding has written the name, and it is asked for the names the router's rules read: the chosen
tool and no_tool. An ambiguous token none of whose names is in the focus is not followed: its
mass still counts in the normaliser (it ends on names, just not split among them), so in exact
arithmetic the focused names' probabilities are the full scorer's; the other names keep the mass
their own tokens settled (a lower bound) and `unresolved` says how much is left unsplit. The
tokens the greedy decoding itself took after `{"tool":"` are already in the request's sequence,
with their logits (`known`): a branch along them costs no model batch. On a trained router, whose
mass sits on the chosen name's own spelling, scoring then usually costs no batch at all. What
moves is the arithmetic: the chosen name's branches are evaluated in batches of one to three
tokens (or are the greedy decoding's own rows) instead of the full scorer's batches of up to 32,
and llama.cpp's logits depend on the batch (see above). On 300 HWU64 test requests with a trained
Q4_K_M router (BENCHMARKS.md, "Name focus") no_tool's probability agreed with the full scorer's to
1e-3 on every request, the chosen tool's to 1e-2 on 272 and to `FOCUS_TOLERANCE` on all; the full
scorer's own values sit that far from a 120-branch, unpruned evaluation on some of them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .copying import CopyTracker
from .decoding import Context, Matcher, Vocabulary, allowed_tokens, step_candidates
from .grammar_engine import Utf8Tracker

DECISION = b'{"tool":"'
MIN_EXPANDED = 1e-5  # ambiguous tokens less likely than this are not followed
MAX_BRANCHES = 32  # ambiguous tokens followed per level (the most probable ones)
NAME_MASS = 1e-3  # with name pruning: unfollowed mass, as a share of the mass settled on names
NAME_TOLERANCE = 1e-2  # how far pruning may move a name's probability, rounding included (see above)
# How far name focus may move the chosen tool's probability on a trained router: the batch shapes
# of its branches differ from the full scorer's (measured up to 0.044 on HWU64; see above).
FOCUS_TOLERANCE = 5e-2
# The call score's log-probabilities are exact to this many nats (see `chosen_logprob`).
LOGPROB_TOLERANCE = 1e-4
_BAND = 12.0  # nats of logits masked at a time below the chosen token's


def chosen_logprob(
    matcher: Matcher,
    utf8: Utf8Tracker,
    vocabulary: Vocabulary,
    logits: np.ndarray,
    token: int,
    next_bytes: Sequence[int] | None = None,
    may_end: bool = True,
    copy: CopyTracker | None = None,
) -> float:
    """log p(token) under the constrained distribution of this step: the model's softmax over
    the tokens the grammar, the UTF-8 guard and the copy rule allow (what greedy decoding chose
    from), whatever tier of the logits `pick_greedy` found the token in.

    The normaliser sums the allowed tokens' weights band by band, from the chosen token's logit
    down (the chosen token is the argmax of the allowed set, so nothing allowed lies above it),
    and stops once every token left below the band, allowed or not, weighs at most
    `LOGPROB_TOLERANCE` of what was summed: the result is then within that many nats of the sum
    over the whole vocabulary, and a confident step masks a few dozen tokens instead of 49k.
    Inside a copied value the allowed set is small and known (`CopyTracker.candidates`): exact.
    """
    chosen = float(logits[token])
    if copy is not None and copy.inside:
        candidates = copy.candidates(vocabulary.trie)
        _, values = allowed_tokens(matcher, utf8, vocabulary, logits, candidates, copy)
        total = float(np.exp(values.astype(np.float64) - chosen).sum())
        return -math.log(total) if total > 0 else 0.0
    universe = step_candidates(vocabulary, next_bytes, may_end)
    offsets = logits[universe].astype(np.float64) - chosen
    weights = np.exp(offsets)
    everything = float(weights.sum())
    summed = covered = 0.0
    upper, lower = math.inf, -_BAND
    lowest = float(offsets.min())
    while True:
        band = np.flatnonzero((offsets >= lower) & (offsets < upper))
        covered += float(weights[band].sum())
        _, values = allowed_tokens(matcher, utf8, vocabulary, logits, universe[band], copy)
        summed += float(np.exp(values.astype(np.float64) - chosen).sum())
        if lower <= lowest or everything - covered <= LOGPROB_TOLERANCE * summed:
            break
        upper, lower = lower, lower - _BAND
    return -math.log(summed) if summed > 0 else 0.0


@dataclass
class _Branch:
    """A point to score from: the name text so far, its logits and grammar state, its mass."""

    text: bytes
    logits: np.ndarray
    matcher: Matcher
    mass: float
    seq: int
    position: int  # where the next token goes
    tokens: tuple[int, ...] = ()  # the tokens after `{"tool":"` that lead here


@dataclass
class NameScores:
    probabilities: dict[str, float]
    pruned: float = 0.0  # probability mass in branches that were not followed
    # Mass in ambiguous branches left unsplit because none of their names was in the focus:
    # counted in the normaliser, shared by no name (so the others' values are lower bounds).
    unresolved: float = 0.0
    decodes: int = 0  # llama.cpp batches spent
    reused: int = 0  # branches whose logits the greedy decoding had already computed
    levels: list[int] = field(default_factory=list)  # branches followed per level


class NameScorer:
    """Scores the candidate names at the decision point. Read-only once built (thread-safe)."""

    def __init__(self, names: list[str], vocabulary: Vocabulary, mass_budget: float = 0.0) -> None:
        self.names = names
        self.vocabulary = vocabulary
        self.mass_budget = mass_budget
        self._closed = [(name, name.encode("utf-8") + b'"') for name in names]
        # Ambiguity cannot outlast the longest prefix two names share (plus the closing quote):
        # each level adds at least one byte, so that bounds the levels and the KV cells spent.
        longest = 0
        for i, (_, a) in enumerate(self._closed):
            for _, b in self._closed[i + 1 :]:
                shared = 0
                while shared < min(len(a), len(b)) and a[shared] == b[shared]:
                    shared += 1
                longest = max(longest, shared)
        self.max_levels = longest
        # KV cells scoring may hold at once (branches of every level stay alive below their
        # children), plus `{"tool":"` teacher-forced on a branch when the output stepped over it.
        self.max_cells = MAX_BRANCHES * longest + len(DECISION)

    def _names_for(self, text: bytes) -> list[str]:
        """The names a text written after `{"tool":"` can still become."""
        return [name for name, closed in self._closed if closed.startswith(text) or text.startswith(closed)]

    def _next_bytes(self, text: bytes) -> set[int]:
        """First bytes of every token the grammar can allow after the name text `text`."""
        return {
            closed[len(text)]
            for _, closed in self._closed
            if len(closed) > len(text) and closed.startswith(text)
        }

    def _distribution(self, branch: _Branch) -> list[tuple[int, float]]:
        """(token, probability) over the tokens the grammar allows at `branch`, times its mass."""
        candidates = self.vocabulary.candidates(self._next_bytes(branch.text))
        masked = branch.matcher.mask(candidates, branch.logits[candidates])
        allowed = np.flatnonzero(np.isfinite(masked))
        if not len(allowed):
            return []
        values = masked[allowed].astype(np.float64)
        weights = np.exp(values - values.max())
        probabilities = weights / weights.sum() * branch.mass
        return [(int(candidates[i]), float(p)) for i, p in zip(allowed, probabilities, strict=True)]

    def score(
        self,
        context: Context,
        base_seq: int,
        base_pos: int,
        root_logits: np.ndarray,
        root_matcher: Matcher,
        free_seqs: list[int],
        focus: frozenset[str] | None = None,
        known: Mapping[tuple[int, ...], np.ndarray] | None = None,
    ) -> NameScores:
        """Probabilities of the names. Leaves the context as it found it.

        `base_seq` holds the prompt and `{"tool":"` up to position `base_pos` (exclusive);
        `root_logits` are the logits there and `root_matcher` the grammar state there.
        `free_seqs` are sequence ids the scorer may use (2 * MAX_BRANCHES suffice).
        `focus`: the names whose probabilities must be exact (None: every name). `known`: the
        logits after token sequences `base_seq` already holds from `base_pos` on (the greedy
        decoding's own name tokens), by those tokens.
        """
        totals = dict.fromkeys(self.names, 0.0)
        scores = NameScores(probabilities={})
        root = _Branch(b"", root_logits, root_matcher, 1.0, base_seq, base_pos)
        level = [root]
        spare = list(free_seqs)
        left_out = 0.0  # mass name pruning did not follow
        try:
            while level:
                ambiguous: list[tuple[_Branch, int, float]] = []
                for branch in level:
                    for token, p in self._distribution(branch):
                        names = self._names_for(branch.text + self.vocabulary.pieces[token])
                        if len(names) == 1:
                            totals[names[0]] += p
                        elif names and focus is not None and focus.isdisjoint(names):
                            scores.unresolved += p
                        elif names and p >= MIN_EXPANDED:
                            ambiguous.append((branch, token, p))
                        else:
                            scores.pruned += p
                ambiguous.sort(key=lambda item: -item[2])
                keep = min(MAX_BRANCHES, len(spare))
                scores.pruned += sum(p for _, _, p in ambiguous[keep:])
                ambiguous = ambiguous[:keep]
                budget = self.mass_budget * (sum(totals.values()) + scores.unresolved) - left_out
                while ambiguous and ambiguous[-1][2] <= budget:  # the least probable, within budget
                    dropped = ambiguous.pop()[2]
                    budget -= dropped
                    left_out += dropped
                    scores.pruned += dropped
                next_level: list[_Branch] = []
                if ambiguous:
                    next_level = self._expand(context, ambiguous, spare, scores, base_seq, known or {})
                for branch in level:
                    self._release(context, branch, root, base_seq, spare)
                level = next_level
        finally:
            for seq in free_seqs:  # whatever an error left behind
                if seq not in spare:
                    context.seq_rm(seq)
        total = sum(totals.values()) + scores.unresolved
        if total <= 0.0:
            scores.probabilities = {n: 1.0 / len(self.names) for n in self.names}
        else:
            scores.probabilities = {n: v / total for n, v in totals.items()}
        return scores

    def _expand(
        self,
        context: Context,
        ambiguous: list[tuple[_Branch, int, float]],
        spare: list[int],
        scores: NameScores,
        base_seq: int,
        known: Mapping[tuple[int, ...], np.ndarray],
    ) -> list[_Branch]:
        """Teacher-force each ambiguous token on its own sequence, all in one batch; a token the
        greedy decoding took right after its parent's (on `base_seq`) needs no model call."""
        branches: list[_Branch] = []
        decoded: list[tuple[_Branch, int, float, int]] = []
        for parent, token, p in ambiguous:
            tokens = (*parent.tokens, token)
            logits = known.get(tokens) if parent.seq == base_seq else None
            if logits is None:
                decoded.append((parent, token, p, spare.pop()))
                continue
            scores.reused += 1
            branches.append(self._child(parent, token, p, logits, base_seq))
        if decoded:
            for parent, _, _, seq in decoded:
                context.seq_cp(parent.seq, seq, 0, parent.position)
            context.decode(
                [token for _, token, _, _ in decoded],
                [parent.position for parent, _, _, _ in decoded],
                [(seq,) for _, _, _, seq in decoded],
                [True] * len(decoded),
            )
            scores.decodes += 1
            for index, (parent, token, p, seq) in enumerate(decoded):
                branches.append(self._child(parent, token, p, context.logits(index), seq))
        scores.levels.append(len(ambiguous))
        return branches

    def _child(self, parent: _Branch, token: int, mass: float, logits: np.ndarray, seq: int) -> _Branch:
        matcher = parent.matcher.clone()
        matcher.advance(token)  # allowed: it came out of the parent's grammar mask
        text = parent.text + self.vocabulary.pieces[token]
        return _Branch(text, logits, matcher, mass, seq, parent.position + 1, (*parent.tokens, token))

    @staticmethod
    def _release(context: Context, branch: _Branch, root: _Branch, base_seq: int, spare: list[int]) -> None:
        if branch is root:
            return  # the caller's
        if branch.seq != base_seq and branch.seq not in spare:
            context.seq_rm(branch.seq)
            spare.append(branch.seq)
        branch.matcher.close()
