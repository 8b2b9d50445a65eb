"""Sends traced requests through Candor with the official OpenAI Python SDK and prints what
it got back as JSON.

Usage: python3 openai_traced.py BASE_URL MODEL SAMPLED_TRACEPARENT UNSAMPLED_TRACEPARENT
Run by tests/traces.rs: with Candor's routing in order, the first and third requests fail
over from the first provider to the second.
"""
import json
import sys

from openai import OpenAI

base_url, model, sampled, unsampled = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
question = [{"role": "user", "content": "What is 17 + 25?"}]
out = {}

# 1. Continues the caller's sampled trace; fails over.
r = client.chat.completions.create(
    model=model, messages=question, temperature=0.3, top_p=0.9, max_tokens=16, seed=7,
    extra_headers={"traceparent": sampled},
)
out["plain"] = {"id": r.id, "content": r.choices[0].message.content}

# 2. The same trace, streamed.
text = []
for chunk in client.chat.completions.create(
    model=model, messages=question, stream=True, extra_headers={"traceparent": sampled},
):
    if chunk.choices and chunk.choices[0].delta.content:
        text.append(chunk.choices[0].delta.content)
out["stream"] = "".join(text)

# 3. No traceparent: Candor starts the trace; fails over.
raw = client.chat.completions.with_raw_response.create(model=model, messages=question)
out["root_request_id"] = raw.headers.get("x-candor-request-id")

# 4. The caller did not record its span: Candor records nothing either.
client.chat.completions.create(
    model=model, messages=question, extra_headers={"traceparent": unsampled},
)
print(json.dumps(out))
