"""Drives Candor with the official OpenAI Python SDK and prints what the SDK returned as JSON.

Usage: python3 openai_client.py BASE_URL CLIENT_KEY MODEL
Run by tests/it/sdk.rs (a simulated provider) and tests/llama.rs (real llama.cpp servers)
against a real gateway; every check here is on SDK objects and
exception types, the way an application would see them.
"""
import json
import sys

import openai
from openai import OpenAI

base_url, key, model = sys.argv[1:4]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
out = {}

r = client.chat.completions.create(
    model=model, temperature=0, messages=[{"role": "user", "content": "What is 17 + 25?"}]
)
out["chat"] = {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
               "completion_tokens": r.usage.completion_tokens, "id": r.id}

raw = client.chat.completions.with_raw_response.create(
    model=model, messages=[{"role": "user", "content": "What is 6 * 7?"}]
)
out["headers"] = {"provider": raw.headers.get("x-candor-provider"),
                  "request_id": raw.headers.get("x-candor-request-id")}

import time

text = []
chunks = 0
token_times = []
for chunk in client.chat.completions.create(
    model=model, stream=True, messages=[{"role": "user", "content": "tell me about caches"}],
    max_tokens=200, extra_body={"min_tokens": 120},
):
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        token_times.append(time.monotonic())
        text.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        out["unexpected_usage_chunk"] = True
span = token_times[-1] - token_times[0] if len(token_times) > 1 else 0
out["stream"] = {"chunks": chunks, "text": "".join(text),
                 # Decode rate as this client saw it: tokens after the first over their span.
                 "client_decode_tps": (len(token_times) - 1) / span if span > 0 else None}

usage = None
for chunk in client.chat.completions.create(
    model=model, stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "What is 2 + 2?"}],
):
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
out["stream_usage"] = usage

c = client.completions.create(model=model, prompt="What is 10 - 3?", max_tokens=8)
out["completion"] = c.choices[0].text

j = client.chat.completions.create(
    model=model, response_format={"type": "json_object"},
    messages=[{"role": "user", "content": "Return JSON with the answer to 5 + 5"}],
)
try:
    out["json"] = json.loads(j.choices[0].message.content)
except ValueError:
    out["json_error"] = {"content": j.choices[0].message.content,
                         "finish": j.choices[0].finish_reason}

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    out["bad_model"] = "no error"
except openai.NotFoundError as e:
    out["bad_model"] = {"type": type(e).__name__, "status": e.status_code, "message": e.message}

try:
    OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0).models.list()
    out["bad_key"] = "no error"
except openai.AuthenticationError as e:
    out["bad_key"] = {"type": type(e).__name__, "status": e.status_code, "message": e.message}

out["models"] = [m.id for m in client.models.list().data]

stream = client.chat.completions.create(
    model=model, stream=True, max_tokens=500, extra_body={"min_tokens": 400},
    messages=[{"role": "user", "content": "a long story"}],
)
got = 0
for chunk in stream:
    got += 1
    if got == 3:
        break
stream.close()
out["closed_after"] = got

print(json.dumps(out))
