"""FaaSpot's `hello` example: greets `args["name"]`, says which key the
context holds, and uses a third-party package from its requirements."""

import six


def main(args, context):
    name = args.get("name", "world")
    return {
        "greeting": f"Hello {name}",
        "access_key_is": context.get("access_key_is", ""),
        "six": six.__version__,
    }
