"""distributed_h5"""
