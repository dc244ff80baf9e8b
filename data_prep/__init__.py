"""Converters from raw sources to graphrec's canonical dataset: `python -m data_prep.<source>`.

simulate   the built-in live-streaming world (the default; no download)
movielens  MovieLens-100K (GroupLens files or the official zip)
tiktok     the MMSSL/DiffMM TikTok split
kuailive   Kuaishou's KuaiLive live-streaming log with gifts (folder of CSVs)
"""
