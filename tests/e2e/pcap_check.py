#!/usr/bin/python3
"""Reads a pcap (tcpdump -w) and prints three numbers: TCP packets to or from port 15008, TLS
application-data record headers seen at the start of their payloads (type 23, version 0x0303),
and how many TCP payloads anywhere in the capture contain MARKER. Plain stdlib, so it runs in
the VM too.   usage: pcap_check.py FILE MARKER"""
import struct
import sys

path, marker = sys.argv[1], sys.argv[2].encode()
packets = records = hits = 0
with open(path, "rb") as f:
    header = f.read(24)
    if len(header) < 24:
        print(0, 0, 0)
        sys.exit(0)
    magic = struct.unpack("<I", header[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", header[20:24])[0]
    while True:
        rec = f.read(16)
        if len(rec) < 16:
            break
        _, _, caplen, _ = struct.unpack(endian + "IIII", rec)
        frame = f.read(caplen)
        offset = {1: 14, 113: 16}.get(linktype, 0)
        if linktype == 1 and frame[12:14] != b"\x08\x00":
            continue  # not IPv4
        ip = frame[offset:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if marker in payload:
            hits += 1
        if 15008 in (sport, dport):
            packets += 1
            if len(payload) >= 5 and payload[0] == 23 and payload[1:3] == b"\x03\x03":
                records += 1
print(packets, records, hits)
