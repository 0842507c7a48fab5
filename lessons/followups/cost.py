"""Follow-up: how would you optimize for cost? The Trade-offs page's latency-vs-cost experiment
(lessons/app_pages/tradeoffs.py: the capacity model's p95-vs-cost curve for the learner's Clarify
answers and budget), drawn here with keys of its own. Every figure in it is modelled."""
from __future__ import annotations

from lessons.app_pages import tradeoffs

KEY = "cost"
TITLE = "How would you optimize for cost?"
QUESTION = ("The design meets its targets, and the bill is too high. Where does the money go, what would you cut "
            "first, and what would each cut cost you in latency or availability? The curve below is the capacity "
            "model's answer for your Clarify answers (modelled, from this machine's measured per-request costs "
            "once calibrated).")

ANSWER = """
**Find where the money goes before cutting.** In the model at the seed's scale (the Capacity model
page itemises the bill), app servers and egress make up most of it and the database nodes a small
part: the app CPU per request (measured here, then carried to the fleet) and the bytes per response
are the levers.

**Run the fleet hotter, with autoscaling, not bigger.** The curve above: a higher utilisation
ceiling needs fewer nodes, and p95 barely moves until queueing takes off near saturation (the knee
at the right). Headroom buys *spike tolerance and failover capacity*, not latency, so size the base
for the average and scale out for the peak (autoscaling, with its boot delay covered by shedding
and rate limits), instead of paying for the peak all month. Reserved or committed capacity for the
base, spot or preemptible for stateless app servers that can die.

**Make each request cheaper.** Cache hits are the cheapest requests there are: every point of hit
ratio removes database reads (fewer replicas) and app CPU. Then connection pooling, fewer queries
per request (N+1), indexes that fit the access pattern, a read model for the hottest read, and the
CDN for anything public (egress and app servers both).

**Pay for consistency and availability only where they are needed.** Synchronous cross-region
replication and an extra region multiply nodes and transfer; asynchronous replicas for reads,
strong consistency only on the write path. Tier the data: hot in the database and cache, old posts
in cheaper storage.

**Say what it costs.** Each cut trades something: a hotter fleet has less room for a spike, fewer
replicas make a failure hurt longer, a longer TTL serves staler data. State the budget (per month
and per million requests), measure p95 against the target after each change, and stop cutting when
the SLO starts to miss.
"""


def render() -> None:
    tradeoffs.cost(prefix="fu")
