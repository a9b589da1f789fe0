"""Networks and what trains them: ConvNet-3 and the other models, DSA augmentation, matching losses,
teachers and soft labels, the expert pool, BPTT's learned schedule, and test accuracy.
"""
