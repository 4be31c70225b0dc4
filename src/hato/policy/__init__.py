"""(room: see shared/DESIGN.md)"""
