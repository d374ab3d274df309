"""Structured output: generation constrained by a JSON schema, regular expression, Lark
grammar or list of choices (token masks from llguidance, the ``structured`` extra), and
OpenAI-style tool calls for chat."""
from .constraint import Constraint, ConstraintError, Grammar, compile_grammar

__all__ = ["Constraint", "ConstraintError", "Grammar", "compile_grammar"]
