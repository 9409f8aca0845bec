"""The gain study: do DSA-reID's kept MF-Stream features beat the same network trained alone?"""
