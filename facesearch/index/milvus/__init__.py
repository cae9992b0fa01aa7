"""A gallery kept in Milvus (a server, a cluster, or Milvus Lite): see README.md and docs/milvus.md.

Nothing here is imported by `import facesearch`; pymilvus loads when a Milvus gallery is opened.
"""

from facesearch.index.milvus.address import MilvusAddress, is_milvus_address, milvus_token, parse_address

__all__ = ["MilvusAddress", "is_milvus_address", "milvus_token", "parse_address"]
