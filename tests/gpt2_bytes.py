"""GPT-2's byte-to-unicode table: each byte's character in encoder.json and vocab.bpe (the
tests write GPT-2's original file pair from rank files with it)."""


def bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table
