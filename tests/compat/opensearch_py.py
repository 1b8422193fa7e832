"""Drives a Shoal node with the official opensearch-py client; exits non-zero on any mismatch."""
import sys

from opensearchpy import OpenSearch, NotFoundError, helpers

url = sys.argv[1]
client = OpenSearch(hosts=[url], use_ssl=False, verify_certs=False)

info = client.info()
assert info["tagline"] == "You Know, for Search", info

client.indices.create(index="compat", body={
    "settings": {"number_of_shards": 2, "number_of_replicas": 0},
    "mappings": {"properties": {"kind": {"type": "keyword"}, "value": {"type": "long"}, "text": {"type": "text"}}},
})
assert client.indices.exists(index="compat")

actions = ({"_index": "compat", "_id": str(i), "_source": {"kind": "even" if i % 2 == 0 else "odd", "value": i, "text": f"document number {i}"}} for i in range(100))
ok, errors = helpers.bulk(client, actions, refresh=True)
assert ok == 100 and not errors, (ok, errors)

result = client.search(index="compat", body={"query": {"term": {"kind": "even"}}, "size": 5, "sort": [{"value": "asc"}]})
assert result["hits"]["total"]["value"] == 50, result["hits"]["total"]
assert [h["_source"]["value"] for h in result["hits"]["hits"]] == [0, 2, 4, 6, 8]

aggs = client.search(index="compat", body={"size": 0, "aggs": {"kinds": {"terms": {"field": "kind"}, "aggs": {"total": {"sum": {"field": "value"}}}}}})
buckets = {b["key"]: b["total"]["value"] for b in aggs["aggregations"]["kinds"]["buckets"]}
assert buckets == {"even": sum(range(0, 100, 2)), "odd": sum(range(1, 100, 2))}, buckets

assert client.count(index="compat", body={"query": {"match": {"text": "number"}}})["count"] == 100
doc = client.get(index="compat", id="7")
assert doc["_source"]["value"] == 7
client.delete(index="compat", id="7", refresh=True)
try:
    client.get(index="compat", id="7")
    raise AssertionError("deleted document still found")
except NotFoundError:
    pass

client.indices.delete(index="compat")
assert not client.indices.exists(index="compat")
print("compat ok")
