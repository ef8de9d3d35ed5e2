"""Ask a localdistil server through the real functioncalming client and print what it returned.

    python functioncalming_client.py BASE_URL API_KEY MODEL MESSAGE...

Runs on an interpreter that has functioncalming (it needs Python >= 3.12; ``make clients``
makes one); prints one JSON object per message: success, error, retries_done, and each tool call
result as ``{"type", "value"}``. tests/test_tools.py runs it against its server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fc_tools import TOOLS  # noqa: E402


async def ask(base_url: str, api_key: str, model: str, message: str) -> dict:
    from functioncalming import get_completion
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:
        response = await get_completion(user_message=message, tools=TOOLS, model=model,
                                        openai_client=client, retries=1)
    results = [{"type": type(r).__name__,
                "value": r.model_dump() if hasattr(r, "model_dump") else r}
               for r in response.tool_call_results]
    return {"success": response.success, "error": repr(response.error) if response.error else None,
            "retries_done": response.retries_done, "results": results,
            "assistant_messages": sum(m["role"] == "assistant" for m in response.messages)}


def main() -> None:
    base_url, api_key, model, *messages = sys.argv[1:]
    for message in messages:
        print(json.dumps(asyncio.run(ask(base_url, api_key, model, message))), flush=True)


if __name__ == "__main__":
    main()
