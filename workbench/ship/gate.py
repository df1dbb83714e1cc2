"""The promotion gate: before a candidate replaces the champion, both models are compared on the
same test images that neither of them trained or validated on, from the per-image predictions
their runs logged (one code path wrote both), with McNemar's test on per-image correctness and a
paired bootstrap interval of the macro-F1 difference (candidate minus champion).

The verdict is `better` or `worse` when either test is significant at 5 % (McNemar p < 0.05, or
the 95 % interval of the difference excluding 0) and both point the same way; `mixed` when they
point opposite ways (more images right but a worse macro-F1, as a class-imbalanced trade can
give), which the gate treats as worse; `tie` when neither is significant; `incomparable` when the
two were tested on different classes or on too few shared leak-free images to say anything.
`promote` refuses a `worse`, `mixed` or `incomparable` verdict, and with `--require-better`
anything but `better`, unless `--force`; the verdict's figures go into the version's tags and
its model card either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from workbench.measure import stats
from workbench.track import evidence

LEVEL = 0.95
RESAMPLES = 2000
# Below this share of the candidate's test images left to compare on, the two were tested on
# different data: a verdict on the overlap would describe neither test set.
MIN_SHARED = 0.5
TAG = "workbench.gate."


@dataclass(frozen=True)
class Verdict:
    decision: str               # better, worse, mixed, tie, incomparable
    reason: str                 # one line a user reads
    champion_version: str
    champion_run_id: str
    n: int = 0                  # images both models were scored on, leak-free
    left_out: int = 0           # shared test images that one of the two trained or validated on
    delta_f1_macro: float = float("nan")   # candidate - champion
    low: float = float("nan")
    high: float = float("nan")
    p_value: float = float("nan")          # McNemar, two-sided
    b: int = 0                  # images the champion got right and the candidate wrong
    c: int = 0                  # images the candidate got right and the champion wrong
    candidate_accuracy: float = float("nan")
    champion_accuracy: float = float("nan")
    forced: bool = False

    @property
    def refuses(self) -> bool:
        return self.decision in ("worse", "mixed", "incomparable")

    def summary(self) -> str:
        """One line: the figures behind the verdict."""
        if self.decision == "incomparable":
            return self.reason
        return (f"on {self.n} shared test images, macro-F1 {self.delta_f1_macro:+.4f} vs champion version "
                f"{self.champion_version} (95 % CI [{self.low:+.4f}, {self.high:+.4f}]), McNemar p={self.p_value:.3g} "
                f"({self.c} images only the candidate got right, {self.b} only the champion)")

    def tags(self) -> dict[str, str]:
        """The evidence, as registry tags on the version it admitted."""
        values = {"decision": self.decision, "champion_version": self.champion_version,
                  "champion_run_id": self.champion_run_id, "n": str(self.n), "left_out": str(self.left_out),
                  "forced": str(self.forced).lower()}
        if self.decision != "incomparable":
            values.update({"delta_f1_macro": f"{self.delta_f1_macro:.6g}", "delta_low": f"{self.low:.6g}",
                           "delta_high": f"{self.high:.6g}", "mcnemar_p": f"{self.p_value:.6g}",
                           "mcnemar_b": str(self.b), "mcnemar_c": str(self.c)})
        else:
            values["reason"] = self.reason[:250]
        return {TAG + k: v for k, v in values.items()}


def decide(true, candidate, champion, labels: list[str], resamples: int = RESAMPLES,
           seed: int = 0) -> tuple[str, float, float, float, stats.McNemarResult]:
    """The verdict on aligned per-image labels and predictions: (decision, Δ macro-F1, low, high,
    McNemar). Values in, values out, so the rule can be checked on hand-made predictions."""
    delta, low, high = stats.bootstrap_f1_macro_difference(true, candidate, champion, labels,
                                                           resamples=resamples, seed=seed, level=LEVEL)
    true, candidate, champion = map(np.asarray, (true, candidate, champion))
    mc = stats.mcnemar(champion == true, candidate == true)
    votes = set()
    if mc.p_value < 1 - LEVEL and mc.b != mc.c:
        votes.add("better" if mc.c > mc.b else "worse")
    if low > 0 or high < 0:
        votes.add("better" if low > 0 else "worse")
    decision = "tie" if not votes else votes.pop() if len(votes) == 1 else "mixed"
    return decision, delta, low, high, mc


def judge(client, candidate_run_id: str, candidate_classes: str, champion_version: str, champion_run_id: str,
          champion_classes: str) -> Verdict:
    """Compare the candidate's logged test predictions with the champion's, on the images both
    were tested on and neither trained or validated on."""
    def incomparable(why: str, **extra) -> Verdict:
        return Verdict("incomparable", why, champion_version, champion_run_id, **extra)

    if candidate_classes != champion_classes:
        return incomparable(f"the candidate predicts classes ({candidate_classes}) and champion version "
                            f"{champion_version} predicts ({champion_classes}): different tasks, no common test")
    predictions = evidence.load_predictions(client, [candidate_run_id, champion_run_id])
    missing = [who for who, run in (("candidate", candidate_run_id), (f"champion version {champion_version}",
                                                                      champion_run_id)) if predictions[run] is None]
    if missing:
        return incomparable(f"the {' and '.join(missing)} logged no per-image test predictions "
                            f"({', '.join(missing)}): nothing to compare on")
    mine = evidence.scored_images(predictions[candidate_run_id]).frame
    theirs = evidence.scored_images(predictions[champion_run_id]).frame
    shared = mine.merge(theirs, on=["sha256", "true"], suffixes=("", "_champion"))
    # One read of the candidate's manifest: what it trained on, and the perceptual hashes of its
    # test images, so near copies of training images count too.
    listed = evidence.manifest(client, candidate_run_id)
    if listed is not None and {"sha256", "phash"} <= set(listed.columns):
        shared["phash"] = shared["sha256"].map(listed.drop_duplicates("sha256").set_index("sha256")["phash"])
    leaked = evidence.seen(shared, evidence.trained_rows(listed)) | \
        evidence.seen(shared, evidence.trained_on(client, champion_run_id))
    clean = shared[~leaked].reset_index(drop=True)
    if len(clean) < max(MIN_SHARED * len(mine), 1):
        return incomparable(
            f"the candidate and champion version {champion_version} were tested on different data: "
            f"{len(clean)} of the candidate's {len(mine)} test images are shared and unseen by both "
            f"({len(shared)} shared, {int(leaked.sum())} of those trained or validated on by one of them)",
            n=len(clean), left_out=int(leaked.sum()))
    labels = candidate_classes.split(",")
    decision, delta, low, high, mc = decide(clean["true"], clean["predicted"], clean["predicted_champion"], labels)
    truth = clean["true"].to_numpy()
    verdict = Verdict(decision, "", champion_version, champion_run_id, n=len(clean), left_out=int(leaked.sum()),
                      delta_f1_macro=delta, low=low, high=high, p_value=mc.p_value, b=mc.b, c=mc.c,
                      candidate_accuracy=float((clean["predicted"].to_numpy() == truth).mean()),
                      champion_accuracy=float((clean["predicted_champion"].to_numpy() == truth).mean()))
    return replace(verdict, reason=verdict.summary())

