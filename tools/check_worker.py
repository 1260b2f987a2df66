"""The child process that checks grammars for tools/checker.py: `python -m tools.check_worker MEMORY_BYTES`.

llguidance's JSON-schema compiler has no budget of its own (an `allOf` of N `pattern`s costs about 2^N time and
memory, and its parser limits do not reach that step), so the check runs here, where the parent can kill it and
the kernel caps its memory. Protocol: one JSON string (a grammar) per line in, one JSON line
`[is_error, messages]` out. This module imports nothing of Lodestar, so it starts in about 0.1 s.
"""

from __future__ import annotations

import json
import resource
import sys


def main() -> None:
    memory_bytes = int(sys.argv[1])
    if memory_bytes > 0:  # allocations past the cap fail, and llguidance aborts: the parent reads EOF
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import llguidance

    limits = llguidance.LLParserLimits(verbose_errors=False)  # errors name the problem, not the whole grammar
    for line in sys.stdin:
        grammar = json.loads(line)
        try:
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, limits=limits)
        except ValueError as exc:  # e.g. a number llguidance cannot represent
            is_error, messages = True, [str(exc)]
        sys.stdout.write(json.dumps([is_error, messages]) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
