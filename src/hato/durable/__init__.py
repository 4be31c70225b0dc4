"""The durable-file kit: what makes a file and its name survive a crash, written once.

`files`: write a whole buffer, fsync a file or a directory, syncfs(2) a file system, make a
batch of written files durable at once (`sync_files`: one fsync, or one syncfs per file
system). `worker`: the batching worker thread that takes every job waiting at that moment as
one batch and settles the callers' futures on their event loop with one wake-up.

Used by the queue's group-commit writer, the Maildir courier and the Maildir encryption, so
that "250 means durable" (DESIGN.md) rests on one piece of code. Imports nothing of hato but
model.
"""
