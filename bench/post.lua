-- wrk script: the non-stream chat request of the bench.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hello"}],"stream":false,"bench_chunks":20}'
