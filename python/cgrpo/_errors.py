"""The drop-ins' errors under their own argument names: an op names what it was given (target_ids, mask,
old_logp, ...); a verl or TRL user passed responses, response_mask, old_log_prob, completion_ids, ...,
so the drop-ins re-raise the op's error (same type) with those names."""

import contextlib
import re


@contextlib.contextmanager
def argument_names(names):
    """Within the block, a cgrpo error whose message names an op argument (a key of `names`, as a whole
    word: "target_ids[3]", "mask must ...") is raised again, same type, naming names[key] instead."""
    try:
        yield
    except (TypeError, ValueError, IndexError, RuntimeError) as e:
        message = str(e)
        if not message.startswith("cgrpo"):
            raise
        renamed = re.sub(r"\b(%s)\b" % "|".join(map(re.escape, names)), lambda m: names[m.group(1)], message)
        if renamed == message:
            raise
        raise type(e)(renamed).with_traceback(e.__traceback__) from None
