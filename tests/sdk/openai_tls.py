"""The official OpenAI Python SDK against Candor's own TLS listener.

Usage: python3 openai_tls.py BASE_URL CLIENT_KEY MODEL CA_FILE
Run by tests/it/tls.rs. The SDK trusts only CA_FILE (the test's self-signed certificate),
so the request succeeds only if Candor presents it and completes the handshake; prints the
answers as JSON.
"""
import json
import sys

import openai
from openai import OpenAI

base_url, key, model, ca_file = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30,
                http_client=openai.DefaultHttpxClient(verify=ca_file))
out = {}
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
out["chat"] = r.choices[0].message.content
text = ""
for chunk in client.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "hi"}]):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
out["stream"] = text
try:
    OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10).models.list()
    out["untrusted"] = "accepted"
except Exception as e:  # the system store does not know the self-signed certificate
    out["untrusted"] = type(e).__name__
print(json.dumps(out))
