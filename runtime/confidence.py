"""How sure the router is of its tool: a probability for every name at the decision point.

Every canonical output starts with `{"tool":"`; the tokens right after it pick the tool. Each
candidate name (the catalogue's tools and `no_tool`) is scored as the probability of its own
tokenization under the grammar-constrained distribution, teacher-forced from that point:

    P(name) = prod_i p(t_i | prefix, t_<i)   where p is the model's softmax over the tokens the
                                              grammar allows at that step (what the constrained
                                              decoder itself samples from)

times, for a name that is a prefix of another name, the probability that the name ends there
(the allowed mass of tokens that start with the closing quote). The scores are normalised over
the names only. Paths are evaluated as a trie in a single llama.cpp batch: one sequence per
name, a token shared by several names evaluated once with all their sequence ids, so scoring
costs one decode of a short batch (13 tokens for the customer-support tools), not one per name.

Only each name's canonical spelling (the tokenizer's, which training targets use) is scored;
other spellings of the same name are left out. A trained router puts its mass on the canonical
spelling; an untrained model may reach a name through another spelling that scores low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .decoding import Context, Matcher, Vocabulary

DECISION = b'{"tool":"'
_QUOTE = ord('"')

# (logits, ids the grammar allows, log of their softmax normaliser) at one trie node
_Distribution = tuple[np.ndarray, frozenset[int], float]


@dataclass
class _Node:
    token: int
    parent: int  # -1 for children of the decision point
    depth: int  # 0 for the first token after the decision point
    text: bytes  # the name bytes up to and including this token
    children: list[int] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)  # names whose path ends here


class NameTrie:
    """The candidate names' token paths, merged into a trie. Read-only once built."""

    def __init__(self, names: list[str], vocabulary: Vocabulary) -> None:
        self.names = names
        self.vocabulary = vocabulary
        self.nodes: list[_Node] = []
        self.roots: list[int] = []
        self.paths: dict[str, list[int]] = {}  # node indices along each name's path
        index: dict[tuple[int, int], int] = {}
        for name in names:
            parent, text, path = -1, b"", []
            for depth, token in enumerate(vocabulary.spell(name.encode("utf-8"))):
                text += vocabulary.pieces[token]
                key = (parent, token)
                if key not in index:
                    index[key] = len(self.nodes)
                    self.nodes.append(_Node(token, parent, depth, text))
                    (self.roots if parent < 0 else self.nodes[parent].children).append(index[key])
                parent = index[key]
                path.append(parent)
            self.nodes[parent].ends.append(name)
            self.paths[name] = path
        encoded = [n.encode("utf-8") for n in names]
        # A name that is a proper prefix of another must also be seen to end (a closing quote next).
        self.needs_end = {
            n for n, b in zip(names, encoded, strict=True) if any(o != b and o.startswith(b) for o in encoded)
        }
        self._encoded = encoded

    def _next_bytes(self, text: bytes) -> set[int]:
        """First bytes of every token the grammar can allow after name text `text`."""
        out = {e[len(text)] for e in self._encoded if len(e) > len(text) and e.startswith(text)}
        if text in self._encoded:
            out.add(_QUOTE)
        return out

    def _log_softmax(self, matcher: Matcher, logits: np.ndarray, text: bytes) -> tuple[np.ndarray, float]:
        """(candidate token ids, their grammar-masked log-normaliser) after name text `text`."""
        candidates = self.vocabulary.candidates(self._next_bytes(text))
        masked = matcher.mask(candidates, logits[candidates])
        allowed = np.isfinite(masked)
        if not allowed.any():
            return candidates[:0], math.inf
        values = masked[allowed].astype(np.float64)
        peak = values.max()
        return candidates[allowed], float(peak + np.log(np.exp(values - peak).sum()))

    def score(
        self,
        context: Context,
        base_seq: int,
        base_pos: int,
        root_logits: np.ndarray,
        root_matcher: Matcher,
        branch_seqs: list[int],
    ) -> dict[str, float]:
        """Probabilities of the names, normalised over the names. Leaves the context as found.

        `base_seq` holds the prompt and `{"tool":"` up to position `base_pos` (exclusive);
        `root_logits` are the logits there and `root_matcher` the grammar state there.
        """
        logp: dict[str, float] = {}
        pending = list(self.names)
        while pending:
            group = pending[: len(branch_seqs)]
            pending = pending[len(branch_seqs) :]
            logp.update(
                self._score_group(context, base_seq, base_pos, root_logits, root_matcher, group, branch_seqs)
            )
        finite = {n: v for n, v in logp.items() if math.isfinite(v)}
        if not finite:
            return {n: 1.0 / len(self.names) for n in self.names}
        peak = max(finite.values())
        weights = {n: math.exp(logp[n] - peak) if n in finite else 0.0 for n in self.names}
        total = sum(weights.values())
        return {n: w / total for n, w in weights.items()}

    def _score_group(
        self,
        context: Context,
        base_seq: int,
        base_pos: int,
        root_logits: np.ndarray,
        root_matcher: Matcher,
        group: list[str],
        branch_seqs: list[int],
    ) -> dict[str, float]:
        seq_of = {name: branch_seqs[i] for i, name in enumerate(group)}
        members: dict[int, list[int]] = {}  # node -> sequences passing through it
        for name in group:
            for node in self.paths[name]:
                members.setdefault(node, []).append(seq_of[name])
        order = sorted(members, key=lambda n: (self.nodes[n].depth, n))
        wanted = {n for n in order if any(c in members for c in self.nodes[n].children)}
        wanted |= {self.paths[name][-1] for name in group if name in self.needs_end}
        if len(order) > context.n_batch:
            raise ValueError(f"the tool names need {len(order)} tokens, more than the batch size")

        for seq in seq_of.values():
            context.seq_cp(base_seq, seq, 0, base_pos)
        try:
            context.decode(
                [self.nodes[n].token for n in order],
                [base_pos + self.nodes[n].depth for n in order],
                [members[n] for n in order],
                [n in wanted for n in order],
            )
            logits = {n: context.logits(i) for i, n in enumerate(order) if n in wanted}
        finally:
            for seq in seq_of.values():
                context.seq_rm(seq)

        # Grammar states along the trie (clones of the decision point's), only where a
        # distribution is read: the root and the wanted nodes.
        matchers: dict[int, Matcher] = {}
        try:
            distributions: dict[int, _Distribution] = {}
            ids, norm = self._log_softmax(root_matcher, root_logits, b"")
            distributions[-1] = (root_logits, frozenset(ids.tolist()), norm)
            for n in order:
                if n not in wanted:
                    continue
                node = self.nodes[n]
                parent = matchers.get(node.parent) if node.parent >= 0 else root_matcher
                if parent is None:  # the parent's token was refused: this branch scores -inf
                    continue
                matcher = parent.clone()
                if not matcher.allows(node.token):
                    matcher.close()
                    continue
                matcher.accept(node.token)
                matchers[n] = matcher
                ids, norm = self._log_softmax(matcher, logits[n], node.text)
                distributions[n] = (logits[n], frozenset(ids.tolist()), norm)

            result = {}
            for name in group:
                total, parent = 0.0, -1
                for n in self.paths[name]:
                    total += self._edge(distributions.get(parent), self.nodes[n].token)
                    parent = n
                if name in self.needs_end:
                    total += self._end(distributions.get(parent))
                result[name] = total
            return result
        finally:
            for matcher in matchers.values():
                matcher.close()

    @staticmethod
    def _edge(distribution: _Distribution | None, token: int) -> float:
        if distribution is None:
            return -math.inf
        logits, ids, norm = distribution
        if token not in ids:
            return -math.inf
        return float(logits[token]) - norm

    def _end(self, distribution: _Distribution | None) -> float:
        if distribution is None:
            return -math.inf
        logits, ids, norm = distribution
        closing = [t for t in ids if self.vocabulary.pieces[t][:1] == b'"']
        if not closing:
            return -math.inf
        values = logits[np.array(closing)].astype(np.float64)
        peak = values.max()
        return float(peak + np.log(np.exp(values - peak).sum())) - norm
