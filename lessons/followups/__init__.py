"""The seed's seven follow-up questions, one module each. Every module exposes:

    KEY       short name, used in widget keys and the page's anchor ("failure", "shards", ...)
    TITLE     the question as a heading
    QUESTION  one or two sentences: what an interviewer asks, in the product's words
    ANSWER    the model answer, Markdown; hidden until the learner reveals it
    render()  the live experiment on the running stack (measured, never simulated)

lessons/app_pages/followups.py draws them in this order.
"""
import importlib

ORDER = ("failure", "shards", "spike", "ratelimit", "cost", "invalidation", "regions")


def modules() -> list:
    """The follow-up modules that exist, in ORDER (a missing one is skipped, not an error)."""
    found = []
    for name in ORDER:
        try:
            found.append(importlib.import_module(f"lessons.followups.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"lessons.followups.{name}":
                raise
    return found
